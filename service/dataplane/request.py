"""A decoded request and its result: what codecs produce and consume, the dataplane's I/O.

A protocol's codec turns its wire format into an :class:`InferRequest` and an
:class:`InferResult` back into its wire format; the dataplane knows neither format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..pipeline.info import PipelineInfo
from .postprocess import Prediction

RANDOM_WEIGHTS_WARNING = "RANDOM WEIGHTS: the model is not trained; predictions are meaningless"


@dataclass
class InferRequest:
    """One request, decoded from its protocol.

    Args:
        pipeline: a pipeline or its model name; None: ``SERVE_PIPELINE``.
        images: encoded images (JPEG, PNG...), decoded by the decode stage; or
        pixels: ``[N, H, W, 3]`` ``uint8`` RGB at the model's input size, which skip it.
        top_k: classes per image to rank and label (0: probabilities only).
        timeout_s: the client's deadline; None: ``SERVE_REQUEST_TIMEOUT_S`` (never longer).
    """

    pipeline: str | None = None
    images: list[bytes] = field(default_factory=list)
    pixels: np.ndarray | None = None
    top_k: int = 0
    timeout_s: float | None = None

    def __len__(self) -> int:
        return len(self.pixels) if self.pixels is not None else len(self.images)


@dataclass
class Timing:
    """Per-request timing in milliseconds (maxima over the request's images)."""

    preprocess_ms: float = 0.0
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    total_ms: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "preprocess_ms": round(self.preprocess_ms, 3),
            "queue_ms": round(self.queue_ms, 3),
            "inference_ms": round(self.inference_ms, 3),
            "total_ms": round(self.total_ms, 3),
            "batch_sizes": self.batch_sizes,
        }


@dataclass
class InferResult:
    """The answer to an :class:`InferRequest`, one row per image in request order."""

    pipeline: PipelineInfo
    probabilities: np.ndarray  # (n, classes) float32
    predictions: list[list[Prediction]]  # top-k per image; empty lists when top_k was 0
    timing: Timing

    @property
    def warnings(self) -> list[str]:
        return [RANDOM_WEIGHTS_WARNING] if self.pipeline.random_weights else []

    @classmethod
    def concat(cls, parts: list[InferResult], total_ms: float) -> InferResult:
        """Several results of one pipeline as one (a job run in chunks)."""
        t = [p.timing for p in parts]
        timing = Timing(
            preprocess_ms=max((x.preprocess_ms for x in t), default=0.0),
            queue_ms=max((x.queue_ms for x in t), default=0.0),
            inference_ms=max((x.inference_ms for x in t), default=0.0),
            total_ms=total_ms,
            batch_sizes=[b for x in t for b in x.batch_sizes],
        )
        probs = [p.probabilities for p in parts if len(p.probabilities)]
        return cls(
            pipeline=parts[-1].pipeline,
            probabilities=np.concatenate(probs) if probs else np.zeros((0, 0), np.float32),
            predictions=[row for p in parts for row in p.predictions],
            timing=timing,
        )
