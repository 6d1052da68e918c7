"""Helpers of the protocol tests: reproducible noise images, encoded."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

SIZE = (32, 32)  # the tiny model's input (tests/support/tiny.py)


def noise_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()
