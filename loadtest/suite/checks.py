"""Is an answer well formed? One function per protocol; each returns None or what is wrong.

Pure functions of the decoded JSON, so they are unit-tested without a server.
"""

from __future__ import annotations

import math
from typing import Any

V2_TYPES = {
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
}  # fmt: skip
JOB_DONE = {"succeeded", "completed", "done", "finished", "success"}
JOB_FAILED = {"failed", "error", "errored", "cancelled", "canceled", "expired"}


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def classify(body: Any, images: int, top_k: int) -> str | None:
    """``POST /v1/classify``: one list of ``top_k`` predictions per image, best first."""
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    preds = body.get("predictions")
    if not isinstance(preds, list) or len(preds) != images:
        got = len(preds) if isinstance(preds, list) else type(preds).__name__
        return f"expected {images} prediction lists, got {got}"
    for i, row in enumerate(preds):
        if not isinstance(row, list) or not row:
            return f"predictions[{i}] is not a non-empty list"
        if len(row) != top_k:
            return f"predictions[{i}] has {len(row)} classes, expected top_k={top_k}"
        scores = []
        for j, p in enumerate(row):
            if not isinstance(p, dict):
                return f"predictions[{i}][{j}] is not an object"
            if not isinstance(p.get("label"), str) or not isinstance(p.get("class_id"), int):
                return f"predictions[{i}][{j}] lacks a string label or an integer class_id"
            score = p.get("score")
            if not _number(score) or not 0.0 <= score <= 1.0:
                return f"predictions[{i}][{j}].score {score!r} is not a probability"
            scores.append(score)
        if any(a < b for a, b in zip(scores, scores[1:], strict=False)):
            return f"predictions[{i}] is not sorted best first"
    if not isinstance(body.get("model"), str):
        return "the answer does not name its model"
    return None


def grpc_infer(response: Any, model: str, shape: list[int]) -> str | None:
    """KServe V2 ``ModelInfer`` answer (a ``ModelInferResponse``) to a classification
    request: one BYTES output of ``shape``, its strings in ``raw_output_contents``."""
    if response.model_name != model:
        return f"model_name is {response.model_name!r}, expected {model!r}"
    if len(response.outputs) != 1 or len(response.raw_output_contents) != 1:
        return "expected one output, in raw_output_contents"
    out = response.outputs[0]
    if out.datatype != "BYTES" or list(out.shape) != shape:
        return f"output is {out.datatype} {list(out.shape)}, expected BYTES {shape}"
    raw, offset, count = response.raw_output_contents[0], 0, 0
    while offset < len(raw):  # 4-byte little-endian length, then the string
        size = int.from_bytes(raw[offset : offset + 4], "little")
        offset += 4 + size
        count += 1
    if offset != len(raw) or count != math.prod(shape):
        return f"the output holds {count} strings; its shape {shape} needs {math.prod(shape)}"
    return None


def v2_infer(body: Any, model: str | None = None, shape: list[int] | None = None) -> str | None:
    """KServe V2 ``POST /v2/models/{name}/infer`` answer: named, typed, shaped outputs (the
    first of ``shape`` when given)."""
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    if not isinstance(body.get("model_name"), str):
        return "model_name is missing"
    if model is not None and body["model_name"] != model:
        return f"model_name is {body['model_name']!r}, expected {model!r}"
    outputs = body.get("outputs")
    if not isinstance(outputs, list) or not outputs:
        return "outputs is not a non-empty list"
    for i, out in enumerate(outputs):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            return f"outputs[{i}] has no name"
        if out.get("datatype") not in V2_TYPES:
            return f"outputs[{i}].datatype {out.get('datatype')!r} is not a V2 type"
        dims = out.get("shape")
        if not isinstance(dims, list) or not all(isinstance(d, int) and d >= 0 for d in dims):
            return f"outputs[{i}].shape is not a list of sizes"
        if i == 0 and shape is not None and dims != shape:
            return f"outputs[0].shape is {dims}, expected {shape}"
        data = out.get("data")
        if not isinstance(data, list):
            return f"outputs[{i}].data is not a list"
        flat = _flatten(data)
        need = math.prod(dims)
        if len(flat) != need:
            return f"outputs[{i}] holds {len(flat)} elements; its shape {dims} needs {need}"
    return None


def _flatten(data: list) -> list:
    out: list = []
    for x in data:
        out.extend(_flatten(x) if isinstance(x, list) else [x])
    return out


def tfserving_predict(body: Any, instances: int) -> str | None:
    """TF Serving ``:predict`` answer in the row format: one prediction per instance."""
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    if "error" in body:
        return f"error: {body['error']}"
    preds = body.get("predictions")
    if not isinstance(preds, list) or len(preds) != instances:
        got = len(preds) if isinstance(preds, list) else type(preds).__name__
        return f"expected {instances} predictions, got {got}"
    for i, p in enumerate(preds):
        if p is None or p == [] or p == {}:
            return f"predictions[{i}] is empty"
    return None


def job_id(body: Any) -> str | None:
    """The id of a job just submitted to ``POST /v1/jobs``."""
    if isinstance(body, dict):
        for key in ("id", "job_id", "jobId"):
            if isinstance(body.get(key), str) and body[key]:
                return body[key]
    return None


def job_state(body: Any) -> str:
    """``done``, ``failed`` or ``pending`` for a ``GET /v1/jobs/{id}`` answer."""
    status = (
        str(body.get("status", body.get("state", ""))).lower() if isinstance(body, dict) else ""
    )
    if status in JOB_DONE:
        return "done"
    if status in JOB_FAILED:
        return "failed"
    return "pending"
