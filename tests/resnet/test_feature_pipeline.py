"""The shipped example pipeline for real: ResNet50 (include_top=False, pooling=avg, random
weights here) -> a head built by ``python -m service.model.make_head`` -> top-k."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from service.model.normalize import normalize
from service.preprocess.decode import PreprocessConfig, decode
from tests.support.helpers import encode, photo_like

pytestmark = pytest.mark.resnet
ROOT = Path(__file__).resolve().parents[2]


def test_resnet50_features_then_a_keras_head_serve_the_example(tmp_path, monkeypatch):
    import keras
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings
    from tests.support.tiny import tiny_loaded

    shutil.copy(ROOT / "examples" / "pipelines.yaml", tmp_path / "pipelines.yaml")
    made = subprocess.run(
        [sys.executable, "-m", "service.model.make_head", "--out", str(tmp_path / "head.keras")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no cached notop weights: random, loudly
    settings = Settings(
        preprocess_workers=1,
        max_batch_size=2,
        batch_buckets=[1, 2],
        pipelines_file=str(tmp_path / "pipelines.yaml"),
    )
    with TestClient(create_app(settings, model_factory=tiny_loaded)) as client:
        pipeline = client.app.state.engine.get("resnet50-head")
        deadline = time.monotonic() + 600
        while pipeline.state not in ("ready", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert pipeline.state == "ready", pipeline.error
        backbone, head = pipeline.chain.stages
        assert backbone.loaded.model.output_shape == (None, 2048)
        assert backbone.runner.input_dtype == np.uint8 and head.runner.input_shape == (2048,)
        image = encode(photo_like(seed=7))
        r = client.post(
            "/v1/pipelines/resnet50-head/classify",
            content=image,
            headers={"content-type": "image/jpeg"},
            params={"top_k": 5},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["warnings"] and "RANDOM" in body["warnings"][0]
        scores = {p["class_id"]: p["score"] for p in body["predictions"][0]}
        assert sorted(scores) == [0, 1, 2, 3, 4]
        pixels = decode(image, PreprocessConfig()).pixels[None]
        features = backbone.loaded.model(normalize(pixels, "caffe"), training=False)
        expected = keras.saving.load_model(tmp_path / "head.keras")(features).numpy()[0]
        np.testing.assert_allclose([scores[i] for i in range(5)], expected, rtol=1e-3, atol=1e-4)
