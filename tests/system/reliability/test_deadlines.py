"""Deadlines: the client's X-Request-Timeout-Ms, capped by SERVE_REQUEST_TIMEOUT_S; work whose
deadline passed is dropped before the model (serve_expired_items_total)."""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.harness import GatedRunner


def _post(client, body, results, key, headers=None):
    start = time.monotonic()
    r = client.post(
        "/v1/classify", content=body, headers={"content-type": "image/jpeg", **(headers or {})}
    )
    results[key] = (r, time.monotonic() - start)


def _expired(client) -> float:
    return client.app.state.metrics.expired._value.get()


def test_client_deadline_drops_queued_work_before_the_model(make_client, jpeg_bytes):
    client = make_client(request_timeout_s=30)
    gate = GatedRunner(client.app.state.engine.get("default").batcher)
    expired_before = _expired(client)
    results: dict = {}
    first = threading.Thread(target=_post, args=(client, jpeg_bytes, results, "first"))
    first.start()
    assert gate.entered.wait(30), "the first request never reached the model"
    # The runner is busy: this one waits in the queue, and its 300 ms deadline passes there.
    _post(client, jpeg_bytes, results, "late", {"X-Request-Timeout-Ms": "300"})
    late, late_s = results["late"]
    assert late.status_code == 504, late.text
    assert late.json()["error"]["code"] == "deadline_exceeded"
    assert late_s < 10, "the deadline was not honoured while the runner was busy"
    assert first.is_alive(), "the first request should still be held in the model"
    gate.release.set()
    first.join(60)
    assert results["first"][0].status_code == 200
    # Only the first request's image was computed; the late one was dropped before the model.
    deadline = time.monotonic() + 10
    while _expired(client) < expired_before + 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _expired(client) == expired_before + 1
    assert gate.items == 1
    metrics = client.get("/metrics").text
    assert "serve_expired_items_total 1.0" in metrics


def test_client_deadline_cannot_exceed_the_server_setting(make_client, jpeg_bytes):
    client = make_client(request_timeout_s=0.3)
    gate = GatedRunner(client.app.state.engine.get("default").batcher)
    results: dict = {}
    first = threading.Thread(target=_post, args=(client, jpeg_bytes, results, "first"))
    first.start()
    try:
        assert gate.entered.wait(30)
        # Asks for ten minutes; the server's 0.3 s applies.
        _post(client, jpeg_bytes, results, "greedy", {"X-Request-Timeout-Ms": "600000"})
        r, seconds = results["greedy"]
        assert r.status_code == 504 and seconds < 10
    finally:
        gate.release.set()
        first.join(60)


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf", "nan", "1e400"])
def test_a_bad_deadline_header_gets_400(client, jpeg_bytes, value):
    r = client.post(
        "/v1/classify",
        content=jpeg_bytes,
        headers={"content-type": "image/jpeg", "X-Request-Timeout-Ms": value},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_timeout"


def test_a_generous_deadline_header_is_served(client, jpeg_bytes):
    r = client.post(
        "/v1/classify",
        content=jpeg_bytes,
        headers={"content-type": "image/jpeg", "X-Request-Timeout-Ms": "5000"},
    )
    assert r.status_code == 200, r.text
