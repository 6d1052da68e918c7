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


def _assert_one_dropped(client, gate: GatedRunner, expired_before: float) -> None:
    """One more item expired, and the model computed only the held one."""
    deadline = time.monotonic() + 10
    while _expired(client) < expired_before + 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _expired(client) == expired_before + 1
    assert gate.items == 1


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
    _assert_one_dropped(client, gate, expired_before)
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


def test_the_grpc_deadline_is_the_requests_deadline(make_client, jpeg_bytes):
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    from tests.support.helpers import free_port

    port = free_port()
    client = make_client(request_timeout_s=30, grpc_port=port)
    gate = GatedRunner(client.app.state.engine.get("default").batcher)
    expired_before = _expired(client)
    results: dict = {}
    first = threading.Thread(target=_post, args=(client, jpeg_bytes, results, "first"))
    first.start()
    assert gate.entered.wait(30), "the first request never reached the model"
    request = pb.ModelInferRequest(
        model_name=client.app.state.settings.model_name,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="pixels", datatype="UINT8",
                                                      shape=[1, 32, 32, 3])],
        raw_input_contents=[bytes(32 * 32 * 3)],
    )  # fmt: skip
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as exc:
                stub.ModelInfer(request, timeout=0.3)  # queued behind the held batch
            assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # The service's own answer, from the deadline the call carried.
            assert exc.value.details() == "the request did not finish before its deadline"
            assert time.monotonic() - start < 10
    finally:
        gate.release.set()
        first.join(60)
    assert results["first"][0].status_code == 200
    # The queued item carried the call's deadline and was dropped before the model.
    _assert_one_dropped(client, gate, expired_before)
