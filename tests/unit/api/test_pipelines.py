"""Named pipelines: a backbone -> head chain served by name, listed, measured per stage."""

import threading
import time

import numpy as np
import pytest

from service.model.normalize import normalize
from service.preprocess.decode import PreprocessConfig, decode
from tests.support.helpers import encode, metric_value, photo_like
from tests.support.tiny import build_tiny_backbone, build_tiny_head

JPEG = {"content-type": "image/jpeg"}
L2 = "{kind: cpu, name: unit, function: 'service.pipeline.cpu_functions:l2_normalize'}"


@pytest.fixture(scope="module")
def pipelines_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipelines")
    build_tiny_backbone(features=6).save(folder / "backbone.keras")
    build_tiny_head(features=6, classes=3).save(folder / "head.keras")
    build_tiny_head(features=7, classes=3).save(folder / "wrong.keras")
    _unpooled().save(folder / "unpooled.keras")
    (folder / "labels.txt").write_text("cat\ndog\nbird\n")
    stages = "{kind: decode}, {kind: model, name: backbone, file: backbone.keras, normalize: caffe}"
    (folder / "pipelines.yaml").write_text(
        "pipelines:\n"
        f"  two: {{labels: labels.txt, stages: [{stages}, "
        "{kind: model, name: head, file: head.keras}, {kind: topk}]}\n"
        f"  mismatched: {{stages: [{stages}, "
        "{kind: model, name: head, file: wrong.keras}, {kind: topk}]}\n"
        f"  normed: {{stages: [{stages}, {L2}, "
        "{kind: model, name: head, file: head.keras}, {kind: topk}]}\n"
        f"  badfn: {{stages: [{stages}, {L2.replace('l2_normalize', 'nope')}, {{kind: topk}}]}}\n"
        "  unpooled: {stages: [{kind: decode}, "
        "{kind: model, name: features, file: unpooled.keras}, {kind: topk}]}\n"
    )
    return folder


def _unpooled():
    """A backbone without pooling: a feature map per image, not one score per class."""
    import keras

    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Conv2D(4, 3, strides=4)(inputs)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def client(pipelines_file):
    """One app for the module: three pipelines, each with its own process pool, start slowly."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings
    from tests.support.tiny import tiny_loaded

    settings = Settings(
        preprocess_workers=1,
        max_batch_size=4,
        batch_buckets=[1, 4],
        pipelines_file=str(pipelines_file / "pipelines.yaml"),
    )
    with TestClient(create_app(settings, model_factory=tiny_loaded)) as client:
        pipelines = client.app.state.engine
        deadline = time.monotonic() + 120
        while {p.state for p in pipelines} - {"ready", "failed"}:
            assert time.monotonic() < deadline, [p.state for p in pipelines]
            time.sleep(0.05)
        yield client


def expected_scores(folder, image: bytes, l2: bool = False) -> np.ndarray:
    import keras

    pixels = decode(image, PreprocessConfig(size=(32, 32))).pixels[None]
    backbone = keras.saving.load_model(folder / "backbone.keras")
    head = keras.saving.load_model(folder / "head.keras")
    features = backbone(normalize(pixels, "caffe")).numpy()
    if l2:
        features = features / np.linalg.norm(features, axis=1, keepdims=True)
    return head(features).numpy()[0]


def test_pipelines_lists_default_and_the_chain_with_its_stages(client):
    body = client.get("/v1/pipelines").json()
    by_name = {p["name"]: p for p in body["pipelines"]}
    assert set(by_name) == {"default", "two", "mismatched", "normed", "badfn", "unpooled"}
    assert by_name["default"]["default"] is True and by_name["two"]["default"] is False
    two = by_name["two"]
    assert two["state"] == "ready" and two["num_classes"] == 3
    assert [(s["name"], s["kind"]) for s in two["stages"]] == [
        ("two/preprocess", "decode"),
        ("two/backbone", "model"),
        ("two/head", "model"),
        ("two/topk", "topk"),
    ]
    assert two["stages"][1]["input_dtype"] == "uint8" and two["stages"][1]["input_shape"] == [
        32,
        32,
        3,
    ]
    assert two["stages"][2]["input_dtype"] == "float32" and two["stages"][2]["input_shape"] == [6]


def test_the_chain_answers_what_backbone_then_head_compute(client, pipelines_file):
    image = encode(photo_like(120, 90, seed=3))
    r = client.post("/v1/pipelines/two/classify", content=image, headers=JPEG, params={"top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["pipeline"] == "two" and body["model"] == "two"
    scores = {p["class_id"]: p["score"] for p in body["predictions"][0]}
    expected = expected_scores(pipelines_file, image)
    np.testing.assert_allclose([scores[i] for i in range(3)], expected, rtol=1e-4, atol=1e-5)
    assert {p["label"] for p in body["predictions"][0]} == {"cat", "dog", "bird"}


def test_a_cpu_stage_between_models_normalises_the_features_in_the_pool(client, pipelines_file):
    image = encode(photo_like(100, 80, seed=6))
    r = client.post("/v1/pipelines/normed/classify", content=image, headers=JPEG)
    assert r.status_code == 200, r.text
    scores = {p["class_id"]: p["score"] for p in r.json()["predictions"][0]}
    expected = expected_scores(pipelines_file, image, l2=True)
    np.testing.assert_allclose([scores[i] for i in range(3)], expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(expected, expected_scores(pipelines_file, image), atol=1e-4)
    stages = client.get("/v1/pipelines/normed").json()["stages"]
    assert [(s["name"], s["kind"]) for s in stages] == [
        ("normed/preprocess", "decode"),
        ("normed/backbone", "model"),
        ("normed/unit", "cpu"),
        ("normed/head", "model"),
        ("normed/topk", "topk"),
    ]
    assert stages[2]["function"] == "service.pipeline.cpu_functions:l2_normalize"
    text = client.get("/metrics").text
    assert metric_value(text, 'serve_stage_duration_seconds_count{stage="normed/unit"}') >= 1
    assert 'serve_queue_depth{stage="normed/unit"} 0.0' in text


def test_a_cpu_stage_whose_function_does_not_import_fails_its_pipeline_alone(client):
    bad = client.app.state.engine.get("badfn")
    assert bad.state == "failed" and "PipelineConfigError" in bad.error, bad.error
    assert "cannot import 'service.pipeline.cpu_functions:nope'" in bad.error
    assert client.get("/readyz").status_code == 200


def test_query_and_body_pick_a_pipeline_and_the_default_is_serve_model(client):
    image = encode(photo_like(64, 64, seed=4))
    by_query = client.post("/v1/classify", content=image, headers=JPEG, params={"pipeline": "two"})
    assert by_query.json()["pipeline"] == "two" and len(by_query.json()["predictions"][0]) == 3
    import base64

    b64 = {"images": [{"b64": base64.b64encode(image).decode()}], "pipeline": "two"}
    by_body = client.post("/v1/classify", json=b64)
    assert by_body.status_code == 200 and by_body.json()["pipeline"] == "two"
    assert by_body.json()["predictions"] == by_query.json()["predictions"]
    plain = client.post("/v1/classify", content=image, headers=JPEG).json()
    assert plain["pipeline"] == "default" and plain["model"] == "resnet50"
    assert len(plain["predictions"][0]) == 5  # the tiny default model has 10 classes


@pytest.mark.parametrize(
    "call, status, code",
    [
        (
            lambda c, img: c.post("/v1/pipelines/nope/classify", content=img, headers=JPEG),
            404,
            "pipeline_not_found",
        ),
        (
            lambda c, img: c.post("/v1/classify?pipeline=nope", content=img, headers=JPEG),
            404,
            "pipeline_not_found",
        ),
        (lambda c, img: c.get("/v1/pipelines/nope"), 404, "pipeline_not_found"),
        (
            lambda c, img: c.post(
                "/v1/pipelines/two/classify",
                json={"images": [{"b64": "AAAA"}], "pipeline": "default"},
            ),
            400,
            "conflicting_pipeline",
        ),
        (
            lambda c, img: c.post("/v1/pipelines/mismatched/classify", content=img, headers=JPEG),
            503,
            "not_ready",
        ),
    ],
)
def test_bad_pipeline_choices_get_json_errors(client, call, status, code):
    r = call(client, encode(photo_like(40, 40)))
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_a_chain_whose_shapes_do_not_fit_fails_alone(client):
    bad = client.app.state.engine.get("mismatched")
    assert bad.state == "failed" and "gives [6] but stage mismatched/head takes [7]" in bad.error
    assert client.get("/readyz").status_code == 200  # the default pipeline keeps serving
    # What it had started is stopped: its runner threads, batchers and models.
    assert bad.chain is None
    assert not [t.name for t in threading.enumerate() if "mismatched/" in t.name]


def test_a_chain_that_ends_without_one_score_per_class_fails_at_start(client):
    """Not ready and then every request a 500: top-k ranks one score per class."""
    bad = client.app.state.engine.get("unpooled")
    assert bad.state == "failed"
    assert "the last stage, unpooled/features, gives [8, 8, 4] per image" in bad.error


def test_every_stage_reports_queue_depth_busy_fraction_and_time(client):
    image = encode(photo_like(64, 64, seed=5))
    before = client.get("/metrics").text
    for _ in range(3):
        r = client.post("/v1/pipelines/two/classify", content=image, headers=JPEG)
        assert r.status_code == 200
    text = client.get("/metrics").text
    for stage in ("two/preprocess", "two/backbone", "two/head", "two/topk"):
        count = f'serve_stage_duration_seconds_count{{stage="{stage}"}}'
        assert metric_value(text, count) - metric_value(before, count) == 3, stage
        assert 0 < metric_value(text, f'serve_stage_busy_ratio{{stage="{stage}"}}') <= 1, stage
    for stage in ("two/preprocess", "two/backbone", "two/head"):
        assert f'serve_queue_depth{{stage="{stage}"}} 0.0' in text, stage


def test_the_standard_protocols_serve_a_configured_pipeline_by_model_name(client, pipelines_file):
    import base64

    image = encode(photo_like(48, 64, seed=5), "JPEG")
    expected = expected_scores(pipelines_file, image)
    b64 = base64.b64encode(image).decode()
    v2 = client.post(
        "/v2/models/two/infer",
        json={"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [b64]}]},
    )
    assert v2.status_code == 200, v2.text
    np.testing.assert_allclose(v2.json()["outputs"][0]["data"], expected, atol=1e-4)
    tfs = client.post("/v1/models/two:predict", json={"instances": [{"b64": b64}]})
    assert tfs.status_code == 200, tfs.text
    np.testing.assert_allclose(tfs.json()["predictions"][0], expected, atol=1e-4)
    assert client.get("/v2/models/two/ready").json()["ready"] is True
    unknown = client.post("/v2/models/nope/infer", json={"inputs": []})
    assert unknown.status_code == 404 and "two" in unknown.json()["error"]
