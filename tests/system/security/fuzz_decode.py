"""Mutation fuzzing of the decode path (Pillow + preprocess.decode) with Hypothesis.

Seeds are small valid JPEG, PNG, WebP, GIF and TIFF files; Hypothesis flips, overwrites,
inserts, deletes and truncates bytes. Each mutant is decoded in a spawned process with a
timeout (``harness.DecodeSandbox``): the only acceptable outcomes are a decoded image or an
``ImageError`` — never another exception, a hang, or a dead process.
"""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF")


def seed(fmt: str) -> bytes:
    rng = np.random.default_rng(len(fmt))
    arr = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    im = Image.fromarray(arr)
    if fmt == "GIF":
        im = im.convert("P")
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


@st.composite
def mutants(draw, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]))
        if not out:
            break
        i = draw(st.integers(0, len(out) - 1))
        if op == "flip":
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            out[i] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif op == "insert":
            out[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del out[i : i + draw(st.integers(1, 16))]
        elif op == "truncate":
            del out[i:]
        else:  # duplicate a run: repeated chunks and markers
            j = min(len(out), i + draw(st.integers(1, 64)))
            out[i:i] = out[i:j] * draw(st.integers(1, 4))
    return bytes(out)


def fuzz(fmt: str, examples: int, sandbox) -> Counter:
    """Run ``examples`` mutants of the ``fmt`` seed; returns the outcome counts."""
    data = seed(fmt)
    assert sandbox.outcome(data) == "ok", f"the {fmt} seed itself does not decode"
    seen: Counter = Counter()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(mutants(data))
    def run(mutant: bytes) -> None:
        outcome = sandbox.outcome(mutant)
        seen[outcome.split(":")[0] if outcome.startswith("ImageError") else outcome] += 1
        assert outcome == "ok" or outcome.startswith("ImageError:"), outcome

    run()
    return seen
