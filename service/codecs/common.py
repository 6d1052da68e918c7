"""What the codecs share: bounded JSON, base64, top-k, compressed bodies, pixel tensors, and
the standard protocols' model names."""

from __future__ import annotations

import base64
import binascii
import json
import sys
import zlib
from typing import Any

import numpy as np

from ..errors import InvalidInput, NotFound, PayloadTooLarge, UnsupportedMediaType
from ..pipeline.info import PipelineInfo

# Deeper than any body of these protocols needs ([N, H, W, 3] pixels are 4 deep); a deeper one
# is refused before anything walks it.
MAX_JSON_DEPTH = 32


def parse_json(
    body: bytes,
    what: str = "the body",
    code: str = "invalid_json",
    invalid: str = "{what} is not valid JSON: {exc}",
) -> Any:
    """``json.loads`` bounded in nesting depth (the size is bounded by the body limit);
    ``invalid`` words the error of malformed JSON in the protocol's own terms."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise InvalidInput(f"{what} is nested too deeply", code) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(invalid.format(what=what, exc=exc), code) from None
    except ValueError:  # an integer past Python's limit on digits (sys.get_int_max_str_digits)
        reason = f"an integer has more than {sys.get_int_max_str_digits()} digits"
        raise InvalidInput(invalid.format(what=what, exc=reason), code) from None
    if _depth_over(value, MAX_JSON_DEPTH):
        raise InvalidInput(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels", code)
    return value


def _depth_over(value: Any, limit: int) -> bool:
    """Whether containers nest deeper than ``limit`` (iterative: no recursion to overflow)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def parse_top_k(value: object, default: int) -> int:
    """``top_k`` from a query or form field: 1..1000."""
    if value is None or value == "":
        return default
    try:
        k = int(str(value))
    except ValueError:
        shown = str(value)[:32]  # never echo a large field back
        raise InvalidInput(f"top_k must be an integer, got {shown!r}", "invalid_top_k") from None
    if not 1 <= k <= 1000:
        raise InvalidInput(f"top_k must be between 1 and 1000, got {k}", "invalid_top_k")
    return k


def decode_b64(text: str, where: str) -> bytes:
    """A base64 image (or a browser's ``data:`` URL); ``where`` names it in the error."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where} is not valid base64", "invalid_base64") from None


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding: gzip|deflate`` (tritonclient's request compression), bounded."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported", "unsupported_encoding"
        )
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the {encoding} body is corrupt: {exc}", "invalid_encoding") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"the decompressed body exceeds {limit} bytes")
    return out


def to_pixels(values: np.ndarray, prefix: str = "", code: str = "invalid_input") -> np.ndarray:
    """Pixel values (a numeric array of the model's input shape) as ``uint8`` RGB, refusing
    anything outside 0..255; ``prefix`` names the tensor in the error."""
    if values.size and (not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 255):
        raise InvalidInput(f"{prefix}pixel values must be RGB in 0..255", code)
    return np.round(values).astype(np.uint8)


def protocol_model(
    plane: Any,
    name: str,
    version: str | None,
    *,
    available: str,
    unknown_model: str,
    unknown_version: str,
) -> PipelineInfo:
    """The pipeline a standard protocol's model name (and version) picks (V2, TF Serving).

    Every pipeline is a model of its own name (``default`` also of SERVE_MODEL_NAME), each with
    one version ``available``. Anything else: 404 in the protocol's own words, a template over
    ``name``, ``version``, ``served`` and ``available``.
    """
    fields = {"name": name, "version": version, "available": available}
    try:
        info = plane.resolve(name)
    except NotFound:
        message = unknown_model.format(served=plane.served_models(), **fields)
        raise NotFound(message, "model_not_found") from None
    if version is not None and version != available:
        raise NotFound(unknown_version.format(**fields), "version_not_found")
    return info
