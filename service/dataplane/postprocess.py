"""The last stage: model outputs -> probabilities -> top-k labelled predictions.

Runs in each request's coroutine after its items come back from the batcher, never on the
model runner's thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Prediction:
    label: str
    class_id: int
    score: float


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, in float64 then back to float32."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x.astype(np.float32)


def probabilities(outputs: np.ndarray, already_probabilities: bool) -> np.ndarray:
    """``outputs`` as float32 probabilities (not copied when they already are)."""
    if already_probabilities:
        return outputs.astype(np.float32, copy=False)
    return softmax(outputs)


def ranked(row: np.ndarray, k: int) -> np.ndarray:
    """The indices of the ``k`` highest values of ``row``, highest first, ties by index (every
    protocol's top-k: the native answer, V2's classification strings)."""
    n = row.shape[-1]
    k = max(1, min(k, n))
    # The k-th highest value, then every index at or above it in index order: a stable sort
    # of those few keeps ties by index, also at the cut.
    kth = np.partition(row, n - k)[n - k]
    top = np.flatnonzero(row >= kth)
    if len(top) < k:  # NaN scores (never >= anything): they rank last
        idx = np.argpartition(-row, k - 1)[:k]
        return idx[np.lexsort((idx, -row[idx]))]
    return top[np.argsort(-row[top], kind="stable")[:k]]


def top_k(probs: np.ndarray, k: int, labels: tuple[str, ...]) -> list[Prediction]:
    """The ``k`` most probable classes of one image, best first (ties by class id)."""
    idx = ranked(probs, k)
    return [
        Prediction(labels[i], i, score)
        for i, score in zip(idx.tolist(), probs[idx].tolist(), strict=True)
    ]
