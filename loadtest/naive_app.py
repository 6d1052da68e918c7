"""Benchmark baseline only: the original tutorial's design, for comparison in `make bench`.

Decoding in the request handler and one ``model.predict`` per request, run in a thread per
request as a threaded Flask server would. Never used by the service.

    NAIVE_MODEL=resnet50 uvicorn loadtest.naive_app:app --port 8001
"""

from __future__ import annotations

import io
import os

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


async def _in_thread(body: bytes) -> dict:
    import anyio

    return await anyio.to_thread.run_sync(_predict, body)


def _predict(body: bytes) -> dict:
    image = Image.open(io.BytesIO(body)).convert("RGB").resize((224, 224))
    x = preprocess_input(np.asarray(image, dtype=np.float32)[None])
    probs = model.predict(x, verbose=0)[0]
    top = np.argsort(-probs)[:5]
    row = [{"label": labels[i], "class_id": int(i), "score": float(probs[i])} for i in top]
    return {"predictions": [row]}
