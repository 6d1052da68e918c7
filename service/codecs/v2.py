"""KServe V2 / Open Inference Protocol over HTTP (as Triton and KServe speak it): the codec.

Every model has two alternative inputs (send exactly one):

* ``images``: ``BYTES [N]`` (or ``[N, 1]``), encoded image files, decoded by the service. As
  binary data the elements are the raw files; in JSON, where bytes cannot travel, each element
  is the file in base64.
* ``pixels``: ``FP32`` or ``UINT8 [N, H, W, 3]``, RGB values 0..255 at the model's input size;
  they skip decode (FP32 values are rounded to whole numbers: the model stage takes ``uint8``).

Every model also has a pixels-only view named ``<model>-pixels``: its one input is ``pixels``
(``FP32``, NHWC, ``max_batch_size`` > 0 in its config), what Triton's example image clients
expect of an image model (``image_client.py -s NONE``: the service normalises in the graph).

and one output, ``probabilities`` (``FP32 [N, classes]``), or with Triton's classification
extension (``"parameters": {"classification": k}`` on the requested output) ``BYTES [N, k]``
strings ``"score:index:label"``. Triton's binary tensor data extension works both ways
(``Inference-Header-Content-Length``, ``binary_data_size``, ``binary_data``,
``binary_data_output``).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dataplane.postprocess import ranked
from ..errors import NotFound
from ..pipeline.info import PipelineInfo
from ..settings import Settings
from .common import protocol_model

VERSION = "1"
INPUT_IMAGES = "images"
INPUT_PIXELS = "pixels"
OUTPUT = "probabilities"
PIXEL_TYPES: dict[str, np.dtype] = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration"]


# How a model name that is not served, or a version that is not, is answered (404).
NOT_FOUND = {
    "available": VERSION,
    "unknown_model": "unknown model {name!r}; this server serves {served}",
    "unknown_version": "unknown version {version!r} of model {name!r}; available: [{available!r}]",
}


# The pixels-only view of every model: ``<model>-pixels``.
PIXELS_VIEW = "-pixels"


@dataclass(frozen=True)
class Model:
    """A model as a V2 client names it: a pipeline, whole or in its pixels-only view."""

    name: str
    info: PipelineInfo
    pixels_only: bool = False

    @property
    def inputs(self) -> tuple[str, ...]:
        return (INPUT_PIXELS,) if self.pixels_only else (INPUT_IMAGES, INPUT_PIXELS)


def find_model(plane: Any, name: str, version: str | None) -> Model:
    """The model ``name`` (a pipeline, or ``<pipeline>-pixels``); 404 in V2's words."""
    try:
        return Model(name, protocol_model(plane, name, version, **NOT_FOUND))
    except NotFound:
        base = name.removesuffix(PIXELS_VIEW)
        if base == name or not base:
            raise
        try:
            return Model(name, protocol_model(plane, base, version, **NOT_FOUND), True)
        except NotFound:
            pass
        raise


# -- metadata -----------------------------------------------------------------------------


def model_metadata(model: Model) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the model's inputs and outputs as tensor metadata."""
    height, width = model.info.input_size
    inputs = {
        INPUT_IMAGES: {"name": INPUT_IMAGES, "datatype": "BYTES", "shape": [-1]},
        INPUT_PIXELS: {"name": INPUT_PIXELS, "datatype": "FP32", "shape": [-1, height, width, 3]},
    }
    return {
        "name": model.name,
        "versions": [VERSION],
        "platform": "keras",
        "inputs": [inputs[name] for name in model.inputs],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, _classes(model.info)]}],
    }


def model_config(model: Model, settings: Settings) -> dict[str, Any]:
    """Triton's model configuration: batching limits and tensors (dims without the batch)."""
    height, width = model.info.input_size
    inputs = {
        INPUT_IMAGES: {
            "name": INPUT_IMAGES,
            "data_type": "TYPE_STRING",
            "dims": [1],
            "optional": True,
        },
        INPUT_PIXELS: {
            "name": INPUT_PIXELS,
            "data_type": "TYPE_FP32",
            "format": "FORMAT_NHWC",
            "dims": [height, width, 3],
            "optional": not model.pixels_only,
        },
    }
    return {
        "name": model.name,
        "platform": "keras",
        "max_batch_size": settings.max_images_per_request,
        "input": [inputs[name] for name in model.inputs],
        "output": [{"name": OUTPUT, "data_type": "TYPE_FP32", "dims": [_classes(model.info)]}],
        "dynamic_batching": {
            "preferred_batch_size": list(settings.batch_buckets),
            "max_queue_delay_microseconds": int(settings.max_batch_delay_ms * 1000),
        },
    }


def _classes(info: PipelineInfo) -> int:
    return info.num_classes or 1000


@dataclass
class OutputSpec:
    """How the client wants the output: binary or JSON, probabilities or top-k strings."""

    binary: bool
    classification: int  # 0: probabilities


# -- answers ------------------------------------------------------------------------------


def classification_strings(probs: np.ndarray, k: int, labels: tuple[str, ...]) -> list[bytes]:
    """Triton's classification strings, ``"%f:index:label"``, best first, row major."""
    out = []
    for row in probs:
        for index in ranked(row, k):
            label = labels[index] if index < len(labels) else ""
            text = f"{row[index]:f}:{index}" + (f":{label}" if label else "")
            out.append(text.encode())
    return out


def output_tensor(
    probs: np.ndarray, want: OutputSpec, labels: tuple[str, ...]
) -> tuple[dict[str, Any], bytes, list[Any]]:
    """The output tensor's metadata, its raw bytes (little-endian FP32, or length-prefixed
    BYTES) and its values as JSON would carry them."""
    tensor: dict[str, Any] = {"name": OUTPUT}
    if want.classification:
        strings = classification_strings(probs, want.classification, labels)
        k = min(want.classification, probs.shape[1])
        tensor.update(datatype="BYTES", shape=[len(probs), k])
        raw = b"".join(struct.pack("<I", len(s)) + s for s in strings)
        return tensor, raw, [s.decode() for s in strings]
    probs = probs.astype("<f4", copy=False)
    tensor.update(datatype="FP32", shape=list(probs.shape))
    return tensor, probs.tobytes(), probs.ravel().tolist()


def encode_response(
    name: str, request_id: Any, probs: np.ndarray, want: OutputSpec, labels: tuple[str, ...]
) -> tuple[bytes, dict[str, str], str]:
    """The response body, its extra headers and its media type."""
    tensor, raw, json_data = output_tensor(probs, want, labels)
    body: dict[str, Any] = {"model_name": name, "model_version": VERSION}
    if isinstance(request_id, str) and request_id:
        body["id"] = request_id
    body["outputs"] = [tensor]
    if not want.binary:
        tensor["data"] = json_data
        return _json(body), {}, "application/json"
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = _json(body)
    return header + raw, {HEADER_LENGTH: str(len(header))}, "application/octet-stream"


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
