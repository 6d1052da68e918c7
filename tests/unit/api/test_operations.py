"""Readiness, overload, metrics, model metadata, OpenAPI, weights policy, and shutdown."""

import signal
import threading
import time

import httpx
import pytest

from service.errors import WeightsUnavailable
from tests.support.helpers import start_server, stop_server
from tests.support.tiny import tiny_loaded


def test_readyz_is_503_until_the_model_is_warm(make_client, jpeg_bytes):
    release = threading.Event()

    def slow_model():
        release.wait(30)
        return tiny_loaded()

    client = make_client(model_factory=slow_model, wait_ready=False)
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
    assert r.headers["retry-after"]
    r = client.post("/v1/classify", content=jpeg_bytes, headers={"content-type": "image/jpeg"})
    assert r.status_code == 503 and r.headers["retry-after"]
    release.set()
    deadline = time.monotonic() + 60
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.get("/readyz").json() == {"status": "ready"}


def test_liveness_stays_green_and_says_draining_while_the_process_drains(make_client):
    client = make_client()
    assert client.get("/healthz").json() == {"status": "ok", "state": "ready"}
    client.app.state.dataplane.drain()
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "state": "draining"}
    assert client.get("/readyz").json()["error"]["state"] == "draining"


def test_a_model_that_fails_to_load_turns_liveness_red(make_client):
    def broken():
        raise RuntimeError("no such weights")

    client = make_client(model_factory=broken, wait_ready=False)
    deadline = time.monotonic() + 30
    while client.app.state.engine.get("default").state != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = client.get("/healthz")
    assert r.status_code == 503 and "no such weights" in r.json()["error"]["message"]
    assert client.get("/readyz").status_code == 503


def test_overload_is_refused_at_once_with_retry_after(make_client, jpeg_bytes):
    client = make_client(max_queue_images=2, retry_after_s=3)
    admission = client.app.state.dataplane.admission
    admission.in_flight = 2  # as if two images were being worked on
    try:
        start = time.monotonic()
        r = client.post("/v1/classify", content=jpeg_bytes, headers={"content-type": "image/jpeg"})
        assert time.monotonic() - start < 5
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "overloaded"
        assert r.headers["retry-after"] == "3"
    finally:
        admission.in_flight = 0
    r = client.post("/v1/classify", content=jpeg_bytes, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200


def test_models_metadata(client):
    (model,) = client.get("/v1/models").json()["models"]
    assert model["name"] == "resnet50"
    assert model["random_weights"] is True
    assert model["input_shape"] == [32, 32, 3]
    assert model["batch_buckets"] == [1, 2, 4, 8]
    assert model["device"].endswith("CPU:0")
    assert model["state"] == "ready"
    assert model["model_instances"] == 1


def test_several_model_instances_answer_every_request_right(make_client, jpeg_bytes):
    from concurrent.futures import ThreadPoolExecutor

    one = make_client(model_instances=1)
    several = make_client(model_instances=3)
    (model,) = several.get("/v1/models").json()["models"]
    assert model["model_instances"] == 3
    headers = {"content-type": "image/jpeg"}
    expected = one.post("/v1/classify", content=jpeg_bytes, headers=headers).json()
    with ThreadPoolExecutor(12) as pool:
        answers = list(
            pool.map(
                lambda _: several.post("/v1/classify", content=jpeg_bytes, headers=headers),
                range(24),
            )
        )
    assert [a.status_code for a in answers] == [200] * 24
    for answer in answers:
        got = answer.json()["predictions"][0]
        assert [p["class_id"] for p in got] == [p["class_id"] for p in expected["predictions"][0]]
        for g, e in zip(got, expected["predictions"][0], strict=True):
            assert abs(g["score"] - e["score"]) < 1e-5
    text = several.get("/metrics").text
    assert _metric(text, "serve_inference_count_total") == 24
    assert 0.0 <= _metric(text, "serve_runner_busy_ratio") <= 1.0


def _metric(text: str, name: str, labels: str = "") -> float:
    prefix = f"{name}{{{labels}" if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{labels}}} not in metrics")


def test_metrics_count_inferences_batches_and_failures(client, jpeg_bytes):
    for _ in range(3):
        client.post("/v1/classify", content=jpeg_bytes, headers={"content-type": "image/jpeg"})
    client.post("/v1/classify", content=b"nope", headers={"content-type": "image/jpeg"})
    text = client.get("/metrics").text
    assert _metric(text, "serve_inference_count_total") == 3
    executions = _metric(text, "serve_execution_count_total")
    assert 1 <= executions <= 3
    assert _metric(text, "serve_request_success_total", 'protocol="http",route="/v1/classify"') == 3
    assert (
        _metric(
            text,
            "serve_request_failure_total",
            'protocol="http",reason="not_an_image",route="/v1/classify"',
        )
        == 1
    )
    for name in (
        "serve_request_duration_seconds_bucket",
        "serve_batch_size_bucket",
        "serve_preprocess_duration_seconds_bucket",
        "serve_inference_duration_seconds_bucket",
        "serve_queue_duration_seconds_bucket",
        "serve_padded_slots_total",
        "serve_runner_busy_ratio",
        "serve_runner_busy_seconds_total",
        "serve_pending_requests",
        'serve_queue_depth{stage="model"}',
        'serve_queue_depth{stage="preprocess"}',
    ):
        assert name in text, name


def test_openapi_declares_the_request_bodies(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"image/jpeg", "multipart/form-data", "application/json"} <= set(body)
    assert "ClassifyJSON" in spec["components"]["schemas"]
    assert "B64Image" in spec["components"]["schemas"]
    assert "ClassifyResponse" in spec["components"]["schemas"]
    for path in ("/healthz", "/readyz", "/metrics", "/v1/models"):
        assert path in spec["paths"]


def test_strict_mode_refuses_to_start_without_imagenet_weights(tmp_path):
    server = start_server(
        {"SERVE_WEIGHTS": "imagenet", "SERVE_STRICT": "true", "KERAS_HOME": str(tmp_path)},
        tmp_path / "log",
        wait_ready=False,
    )
    assert server.process.wait(120) != 0
    assert "refusing to start" in server.log()


def test_strict_mode_refuses_random_weights(tmp_path):
    server = start_server(
        {"SERVE_WEIGHTS": "random", "SERVE_STRICT": "true"}, tmp_path / "log", wait_ready=False
    )
    assert server.process.wait(120) != 0
    assert "not allowed" in server.log()


def test_sigterm_drains_and_exits_zero(tiny_model_file, tmp_path, jpeg_bytes):
    server = start_server({"SERVE_WEIGHTS": str(tiny_model_file)}, tmp_path / "log")
    r = httpx.post(
        server.url + "/v1/classify", content=jpeg_bytes, headers={"content-type": "image/jpeg"}
    )
    assert r.status_code == 200
    assert stop_server(server, signal.SIGTERM) == 0
    assert "draining" in server.log()


@pytest.mark.parametrize("weights", ["imagenet", "/no/such/file.weights.h5"])
def test_missing_weights_fall_back_to_random_loudly_when_not_strict(weights, tmp_path, monkeypatch):
    from service.model import loader

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    built = []
    monkeypatch.setattr(
        loader, "build_architecture", lambda name, **kw: built.append(name) or _tiny_model()
    )
    loaded = loader.load_model("resnet50", weights, strict=False)
    assert loaded.random_weights and loaded.weights_source == "random"
    assert any("RANDOM" in w for w in loaded.warnings)
    with pytest.raises(WeightsUnavailable):
        loader.load_model("resnet50", weights, strict=True)


def _tiny_model():
    from tests.support.tiny import build_tiny

    return build_tiny()
