"""``SERVE_MIXED_PRECISION`` as Keras names it, for every backend."""

from __future__ import annotations


def precision_policy(mixed_precision: str) -> str:
    """The Keras dtype policy of ``SERVE_MIXED_PRECISION`` (outputs stay float32)."""
    return {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}[
        mixed_precision
    ]
