"""Faults: a model exception, a cpu-stage worker killed with SIGKILL under load, SIGTERM
under load, overload. Each is survived: only the affected requests fail, with a status the
client can act on, and the service stays ready."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import threading
import time

import httpx
import psutil
import pytest

from loadtest.common import scrape
from tests.support.harness import GatedRunner, closed_loop, slow_png
from tests.support.helpers import HARDENED_TOKEN, encode, photo_like, start_server, stop_server
from tests.support.tiny import build_tiny_backbone, build_tiny_head

AUTH = {"Authorization": f"Bearer {HARDENED_TOKEN}"}
JPEG = {"content-type": "image/jpeg"}


def test_a_model_exception_fails_only_its_batch(make_client, jpeg_bytes, caplog):
    client = make_client()
    gate = GatedRunner(client.app.state.engine.get("default").batcher)
    inner = gate.inner

    def failing_first(payloads):
        if gate.calls == 1:
            raise RuntimeError("CUDA_ERROR_ILLEGAL_ADDRESS (simulated)")
        return inner(payloads)

    gate.inner = failing_first
    results: dict = {}

    def post(key):
        results[key] = client.post(
            "/v1/classify", content=jpeg_bytes, headers={"content-type": "image/jpeg"}
        )

    caplog.set_level(logging.INFO)
    threads = [threading.Thread(target=post, args=("failed",))]
    threads[0].start()
    assert gate.entered.wait(30)
    # Two more requests queue behind the failing batch: they form the next batch.
    threads += [threading.Thread(target=post, args=(k,)) for k in ("next1", "next2")]
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 30
    while len(client.app.state.engine.get("default").batcher) < 2:
        assert time.monotonic() < deadline, "the next requests never queued"
        time.sleep(0.01)
    gate.release.set()
    for t in threads:
        t.join(60)

    failed = results["failed"]
    assert failed.status_code == 500
    body = failed.json()
    assert body["error"]["code"] == "model_error"
    error_id = re.search(r"error id ([0-9a-f]{12})", body["error"]["message"]).group(1)
    assert "Traceback" not in failed.text and "CUDA_ERROR" not in failed.text
    assert error_id in caplog.text, "the error id is not in the log"
    assert "CUDA_ERROR_ILLEGAL_ADDRESS" in caplog.text, "the cause is not in the log"
    for key in ("next1", "next2"):
        assert results[key].status_code == 200, results[key].text
    assert gate.calls == 2, "the next two requests should have run as one batch"
    assert client.get("/readyz").status_code == 200


def test_a_killed_cpu_stage_worker_is_replaced_under_load(make_client, tmp_path):
    """SIGKILL of a busy worker of a cpu stage: it is replaced, the item it held is retried on
    the other worker, and no request fails."""
    build_tiny_backbone(features=6).save(tmp_path / "backbone.keras")
    build_tiny_head(features=6, classes=3).save(tmp_path / "head.keras")
    (tmp_path / "pipelines.yaml").write_text(
        "pipelines:\n"
        "  slow: {stages: [{kind: decode},"
        " {kind: model, name: backbone, file: backbone.keras, normalize: caffe},"
        " {kind: cpu, name: twice, function: 'tests.support.helpers:slow_double'},"
        " {kind: model, name: head, file: head.keras}, {kind: topk}]}\n"
    )
    client = make_client(pipelines_file=str(tmp_path / "pipelines.yaml"), preprocess_workers=2)
    pipeline = client.app.state.engine.get("slow")
    deadline = time.monotonic() + 120
    while pipeline.state != "ready":
        assert pipeline.state != "failed" and time.monotonic() < deadline, pipeline.error
        time.sleep(0.05)
    before = set(pipeline.pool.worker_pids())
    assert len(before) == 2
    image = encode(photo_like(64, 64))
    statuses: list[int] = []
    stop = threading.Event()

    def user() -> None:
        while not stop.is_set():
            r = client.post("/v1/pipelines/slow/classify", content=image, headers=JPEG)
            statuses.append(r.status_code)

    users = [threading.Thread(target=user) for _ in range(4)]
    for t in users:
        t.start()
    time.sleep(1.0)
    victim = next(w.process.pid for w in pipeline.pool._workers if w.task is not None)
    os.kill(victim, signal.SIGKILL)
    time.sleep(1.5)
    stop.set()
    for t in users:
        t.join(30)
    assert len(statuses) > 10 and set(statuses) == {200}, statuses
    after = set(pipeline.pool.worker_pids())
    assert len(after) == 2 and victim not in after
    metrics = client.get("/metrics").text
    assert re.search(r"^serve_preprocess_pool_restarts_total [1-9]", metrics, re.M), metrics


def post_png(url: str, body: bytes) -> tuple[int | str, str | None, str]:
    """``POST /v1/classify`` with a PNG: the status (or the client's error, by name), the
    ``Retry-After`` header and the body."""
    try:
        r = httpx.post(
            url + "/v1/classify", content=body, headers={"content-type": "image/png"}, timeout=60
        )
    except httpx.HTTPError as exc:
        return type(exc).__name__, None, ""
    return r.status_code, r.headers.get("retry-after"), r.text


def start_taken(url: str, send, count: int, answered: list) -> list[threading.Thread]:
    """``count`` threads running ``send`` (which appends its answer to ``answered``), returned
    once the service has taken all of their requests (``wait_taken``)."""
    senders = [threading.Thread(target=send) for _ in range(count)]
    for t in senders:
        t.start()
    wait_taken(url, count, answered)
    return senders


def wait_taken(url: str, count: int, answered: list) -> None:
    """Until the service has taken all ``count`` requests (in its hands or answered). A fixed
    wait is not enough on a loaded machine, and a request still in the listener's backlog
    when the signal comes is refused, as it should be: these tests are about those taken."""
    deadline = time.monotonic() + 30
    while True:
        text = httpx.get(url + "/metrics", timeout=5).text
        (line,) = [x for x in text.splitlines() if x.startswith("serve_pending_requests ")]
        if float(line.split()[1]) - 1 + len(answered) >= count:  # - 1: this scrape
            return
        assert time.monotonic() < deadline, f"the service took fewer than {count} requests"
        time.sleep(0.02)


def test_sigterm_under_load_finishes_in_flight_refuses_new_and_exits_zero(
    tiny_model_file, tmp_path
):
    srv = start_server(
        {"SERVE_WEIGHTS": str(tiny_model_file), "SERVE_LOG_FORMAT": "json"}, tmp_path / "log"
    )
    body = slow_png(2500)  # ~150 ms each: 24 of them keep two workers busy for ~2 s
    url = srv.url + "/v1/classify"
    in_flight: list = []

    def send():
        in_flight.append(post_png(srv.url, body)[0])

    kids = psutil.Process(srv.process.pid).children(recursive=True)
    assert len(kids) >= 3  # two front ends and the accelerator process
    try:
        senders = start_taken(srv.url, send, 24, in_flight)
        srv.process.send_signal(signal.SIGTERM)
        # From the signal on, readiness is never 200 again and new requests are refused.
        probes = []
        for _ in range(10):
            try:
                probes.append(httpx.get(srv.url + "/readyz", timeout=2).status_code)
            except httpx.HTTPError:
                probes.append("refused")
            time.sleep(0.05)
        assert 200 not in probes, probes
        try:
            late = httpx.post(
                url, content=body, headers={"content-type": "image/png"}, timeout=5
            ).status_code
        except httpx.HTTPError:
            late = "refused"
        assert late in (503, "refused")
        for t in senders:
            t.join(60)
        assert srv.process.wait(60) == 0
        # Every process of the pod drained and exited, none is left behind.
        assert not [k.pid for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    finally:
        stop_server(srv)
    assert in_flight.count(200) == 24, in_flight
    lines = [json.loads(line) for line in srv.log().splitlines() if line.startswith("{")]
    assert any("draining" in line["message"] for line in lines)


def test_requests_the_graceful_timeout_cuts_off_get_503_shutting_down_not_500(
    tiny_model_file, tmp_path
):
    """Past SERVE_GRACEFUL_TIMEOUT_S uvicorn cancels what is still running: those requests are
    answered 503 with Retry-After (retry elsewhere), never 500, and the pod exits 0 in time."""
    srv = start_server(
        {
            "SERVE_WEIGHTS": str(tiny_model_file),
            "SERVE_LOG_FORMAT": "json",
            "SERVE_GRACEFUL_TIMEOUT_S": "1",
            "SERVE_FRONTEND_PROCESSES": "1",
            "SERVE_PREPROCESS_WORKERS": "1",
            "SERVE_DECODE_INLINE_PIXELS": "0",
        },
        tmp_path / "log",
    )
    body = slow_png(4000)  # decoded one at a time: 40 of them take far longer than 1 s
    answers: list = []

    def send():
        answers.append(post_png(srv.url, body))

    try:
        senders = start_taken(srv.url, send, 40, answers)
        signalled = time.monotonic()
        srv.process.send_signal(signal.SIGTERM)
        assert srv.process.wait(30) == 0
        assert time.monotonic() - signalled < 1 + 10  # the graceful timeout, and start-up slack
        for t in senders:
            t.join(30)
    finally:
        stop_server(srv)
    statuses = [status for status, _, _ in answers]
    assert len(answers) == 40 and set(statuses) <= {200, 503}, answers
    cut = [(retry, json.loads(text)) for status, retry, text in answers if status == 503]
    assert cut, "the graceful timeout cut off nothing: the test's requests were too fast"
    assert all(r == "1" and b["error"]["code"] == "shutting_down" for r, b in cut), cut
    assert "Exception in ASGI application" not in srv.log()


def test_a_second_sigint_kills_every_process_and_exits_130(tiny_model_file, tmp_path):
    """Ctrl-C twice: no waiting for the drain, and an exit status that says requests were
    dropped (a drain's is 0)."""
    srv = start_server(
        {
            "SERVE_WEIGHTS": str(tiny_model_file),
            "SERVE_FRONTEND_PROCESSES": "1",
            "SERVE_DECODE_INLINE_PIXELS": "0",
        },
        tmp_path / "log",
    )
    body = slow_png(4000)  # decoded one at a time: 20 of them take far longer than the test
    answers: list = []

    def send():
        answers.append(post_png(srv.url, body)[0])

    kids = psutil.Process(srv.process.pid).children(recursive=True)
    try:
        senders = start_taken(srv.url, send, 20, answers)
        srv.process.send_signal(signal.SIGINT)
        time.sleep(0.3)
        signalled = time.monotonic()
        srv.process.send_signal(signal.SIGINT)
        assert srv.process.wait(30) == 130
        assert time.monotonic() - signalled < 10  # not the 30 s graceful timeout
        assert not [k.pid for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
        for t in senders:
            t.join(30)
    finally:
        stop_server(srv)
    assert answers.count(200) < 20, answers  # the kill cut requests off
    assert "second SIGINT: killing every process" in srv.log()


def test_sigterm_drains_grpc_too(tiny_model_file, tmp_path):
    """In-flight gRPC calls finish; health turns NOT_SERVING at once; new calls are refused
    with UNAVAILABLE (CANCELLED where gRPC had accepted them as it stopped, or the port is
    closed); the pod exits 0."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    srv = start_server({"SERVE_WEIGHTS": str(tiny_model_file)}, tmp_path / "log")
    body = slow_png(2500)
    request = pb.ModelInferRequest(
        model_name="resnet50",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[1])],
        raw_input_contents=[len(body).to_bytes(4, "little") + body],
    )
    in_flight: list = []

    def send():
        with grpc.insecure_channel(srv.grpc) as channel:  # one connection each
            try:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                in_flight.append(stub.ModelInfer(request, timeout=60).outputs[0].shape)
            except grpc.RpcError as exc:
                in_flight.append(exc.code())

    def refused(call) -> object:
        try:
            with grpc.insecure_channel(srv.grpc) as channel:
                return call(channel)
        except grpc.RpcError as exc:
            return exc.code()

    try:
        senders = start_taken(srv.url, send, 12, in_flight)
        srv.process.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        health = refused(
            lambda ch: (
                health_pb2_grpc.HealthStub(ch)
                .Check(health_pb2.HealthCheckRequest(), timeout=5)
                .status
            )
        )
        # Every front end stops its gRPC server as the signal comes (the in-flight calls keep
        # their grace): a call that reaches it then is refused by gRPC itself, UNAVAILABLE
        # or, when it was already accepted, CANCELLED.
        refusals = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert health in (health_pb2.HealthCheckResponse.NOT_SERVING, *refusals), health
        late = refused(
            lambda ch: service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(request, timeout=5)
        )
        assert late in refusals, late
        for t in senders:
            t.join(60)
        assert srv.process.wait(60) == 0
    finally:
        stop_server(srv)
    assert in_flight == [[1, 10]] * 12, in_flight


def _wait_read(url: str, count: int, call) -> None:
    """Until the stream's requests in the service's hands or answered reach ``count``."""
    ok = 'serve_request_success_total{protocol="grpc",route="ModelStreamInfer"}'
    deadline = time.monotonic() + 30
    while True:
        values = scrape(url)
        pending, answered = values["serve_pending_requests"], values.get(ok, 0.0)
        if pending - 1 + answered >= count:  # - 1: this scrape
            return
        assert not call.done(), f"the stream ended: {call.code()}: {call.details()}"
        assert time.monotonic() < deadline, f"the stream's requests: {pending - 1 + answered}"
        time.sleep(0.02)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_an_inference_stream_ends_when_idle_and_on_the_drain_with_every_answer(
    tiny_model_file, tmp_path
):
    """A ``ModelStreamInfer`` stream left idle past ``SERVE_KEEPALIVE_TIMEOUT_S`` ends
    DEADLINE_EXCEEDED after its answers. On SIGTERM a stream reads nothing more, answers every
    request it had read, and ends UNAVAILABLE at once (not after the graceful timeout)."""
    import queue

    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    srv = start_server(
        {
            "SERVE_WEIGHTS": str(tiny_model_file),
            "SERVE_FRONTEND_PROCESSES": "1",
            "SERVE_KEEPALIVE_TIMEOUT_S": "1",
            "SERVE_GRPC_MESSAGE_TIMEOUT_S": "1",
        },
        tmp_path / "log",
    )
    body = slow_png(4000)  # a second or so of decoding each

    def request(rid: str) -> pb.ModelInferRequest:
        return pb.ModelInferRequest(
            model_name="resnet50",
            id=rid,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[1])
            ],
            raw_input_contents=[len(body).to_bytes(4, "little") + body],
        )

    def requests(outbox: queue.Queue):
        while (item := outbox.get()) is not None:
            yield item

    try:
        with grpc.insecure_channel(srv.grpc) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            idle: queue.Queue = queue.Queue()
            idle.put(request("first"))
            answers = stub.ModelStreamInfer(requests(idle), timeout=60)
            assert next(answers).infer_response.id == "first"
            with pytest.raises(grpc.RpcError) as exc:
                next(answers)
            idle.put(None)
            assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "sent no complete request message for 1 s" in exc.value.details()

        # A connection of its own: the server closes an idle one after the same 1 s.
        with grpc.insecure_channel(srv.grpc) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            outbox: queue.Queue = queue.Queue()
            for i in range(3):
                outbox.put(request(f"read-{i}"))
            answers = stub.ModelStreamInfer(requests(outbox), timeout=60)
            _wait_read(srv.url, 3, answers)
            srv.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            while _ready(srv.url):  # until the front end drains
                assert time.monotonic() - signalled < 10, "the front end never drained"
                time.sleep(0.05)
            time.sleep(0.2)
            outbox.put(request("after-the-signal"))
            got = []
            last = signalled
            with pytest.raises(grpc.RpcError) as exc:
                for answer in answers:
                    got.append((answer.infer_response.id, answer.error_message))
                    last = time.monotonic()
            ended = time.monotonic() - last
            outbox.put(None)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE, exc.value
        assert "draining" in exc.value.details()
        assert got == [(f"read-{i}", "") for i in range(3)], got
        # Right after the last answer, not when the 30 s graceful timeout runs out.
        assert ended < 5, ended
        assert srv.process.wait(60) == 0
    finally:
        stop_server(srv)


def test_sigterm_stops_grpc_at_once_while_http_drains(tiny_model_file, tmp_path):
    """The gRPC listener goes (GOAWAY to the channels, so clients reconnect to another pod)
    as the signal comes, not once the HTTP requests in flight have finished."""
    srv = start_server(
        {"SERVE_WEIGHTS": str(tiny_model_file), "SERVE_FRONTEND_PROCESSES": "1"},
        tmp_path / "log",
    )
    url = srv.url + "/v1/classify"
    body = slow_png(6000)  # seconds of decoding
    answered: list = []

    def send():
        r = httpx.post(url, content=body, headers={"content-type": "image/png"}, timeout=60)
        answered.append(r.status_code)

    host, port = srv.grpc.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass  # the gRPC port takes connections before the signal
        sender = threading.Thread(target=send)
        sender.start()
        wait_taken(srv.url, 1, answered)
        srv.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "the gRPC port still takes connections"
            time.sleep(0.05)
        assert answered == [], "the HTTP request ended before the gRPC port closed"
        sender.join(60)
        assert srv.process.wait(60) == 0
    finally:
        stop_server(srv)
    assert answered == [200]


def test_overload_refuses_at_once_and_loses_nothing(tiny_model_file, tmp_path):
    srv = start_server(
        {
            "SERVE_WEIGHTS": str(tiny_model_file),
            "SERVE_PREPROCESS_WORKERS": "1",
            "SERVE_MAX_QUEUE_IMAGES": "2",
            "SERVE_RETRY_AFTER_S": "2",
        },
        tmp_path / "log",
    )
    try:
        result = asyncio.run(closed_loop(srv.url + "/v1/classify", slow_png(2000), 12, 3.0))
        assert httpx.get(srv.url + "/readyz").status_code == 200
    finally:
        stop_server(srv)
    accepted, refused = result.of(200), result.of(503)
    assert accepted and refused
    assert not result.lost(), result.lost()[:5]
    assert all(o.retry_after == "2" and o.code == "overloaded" for o in refused)
    # Refusals come at once, not after queueing (generous bound: "at once" vs "waits").
    refused_p50 = result.percentile([o.seconds for o in refused], 50)
    accepted_p50 = result.percentile([o.seconds for o in accepted], 50)
    assert refused_p50 < accepted_p50, (refused_p50, accepted_p50)
    assert refused_p50 < 1.0
