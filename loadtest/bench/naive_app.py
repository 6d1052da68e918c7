"""Benchmark baseline only: the original tutorial's design, for comparison in `make bench`.

Decoding in the request handler, one ``model.predict`` per request, one request at a time (the
tutorial's Flask server: no batching, no pipelining, nothing overlaps). Never used by the
service.

    NAIVE_MODEL=resnet50 uvicorn loadtest.bench.naive_app:app --port 8001
"""

from __future__ import annotations

import io
import os
import threading

import numpy as np
from fastapi import FastAPI, Request
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from keras.applications.resnet50 import preprocess_input  # noqa: E402

from service.model.labels import imagenet_labels  # noqa: E402

model = keras.applications.ResNet50(weights=None)
labels = imagenet_labels()
app = FastAPI(title="naive baseline")


@app.post("/v1/classify")
async def classify(request: Request) -> dict:
    body = await request.body()
    return await _in_thread(body)


_one_at_a_time = threading.Lock()


async def _in_thread(body: bytes) -> dict:
    import anyio

    return await anyio.to_thread.run_sync(_predict_alone, body)


def _predict_alone(body: bytes) -> dict:
    with _one_at_a_time:
        return _predict(body)


def _predict(body: bytes) -> dict:
    image = Image.open(io.BytesIO(body)).convert("RGB").resize((224, 224))
    x = preprocess_input(np.asarray(image, dtype=np.float32)[None])
    probs = model.predict(x, verbose=0)[0]
    top = np.argsort(-probs)[:5]
    row = [{"label": labels[i], "class_id": int(i), "score": float(probs[i])} for i in top]
    return {"predictions": [row]}
