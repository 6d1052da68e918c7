"""Traces: a real server with the standard OTEL_* variables exports to a real OTLP/HTTP
receiver on loopback (tests/support/otlp.py decodes what a collector would); W3C
``traceparent`` honoured on HTTP and gRPC, the stages as child spans, the trace id in the access
log and in 5xx bodies; off by default at no cost."""

from __future__ import annotations

import json
import secrets
import time

import httpx
import numpy as np
import pytest

from service import tracing
from tests.monitoring.test_real_prometheus import PIPELINES, slow_pipeline_ready
from tests.support.helpers import encode, photo_like, start_server, stop_server
from tests.support.otlp import Span, start_receiver

SERVER, INTERNAL = 2, 1  # OTLP span kinds
STAGES = {"read body", "decode", "queue wait", "inference", "answer"}


@pytest.fixture(scope="module")
def receiver():
    receiver, server = start_receiver()
    yield receiver
    server.shutdown()


@pytest.fixture(scope="module")
def traced(receiver, tiny_model_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("traced")
    pipelines = tmp / "pipelines.yaml"
    pipelines.write_text(PIPELINES.format(model=tiny_model_file))
    server = start_server(
        {
            "SERVE_WEIGHTS": str(tiny_model_file),
            "SERVE_PIPELINES_FILE": str(pipelines),
            "SERVE_LOG_FORMAT": "json",
            "SERVE_ACCESS_LOG": "true",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_SERVICE_NAME": "resnet-serve-test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: export soon after the request
        },
        tmp / "server.log",
    )
    slow_pipeline_ready(server.url)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def image() -> bytes:
    return encode(photo_like(120, 160), "JPEG")


def new_parent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def trace_of(receiver, trace_id: str, names: set[str]) -> dict[str, Span]:
    spans = receiver.wait_for(lambda s: names <= {x.name for x in s if x.trace_id == trace_id})
    return {s.name: s for s in spans if s.trace_id == trace_id}


def check_children(spans: dict[str, Span], root: Span) -> None:
    for name in STAGES & set(spans):
        child = spans[name]
        assert child.parent_id == root.span_id, name
        assert child.kind == INTERNAL, name
        assert root.start_ns <= child.start_ns <= child.end_ns <= root.end_ns, name
    # queue wait, then inference, back to back, as the batch reported them
    assert spans["queue wait"].end_ns == spans["inference"].start_ns
    assert spans["inference"].attributes["batch.size"] >= 1


def classify_traced(traced, image: bytes) -> tuple[str, str]:
    """One raw-image classify request in a new trace: (trace id, the caller's span id)."""
    trace_id, parent, header = new_parent()
    r = httpx.post(
        traced.url + "/v1/classify",
        content=image,
        headers={"content-type": "image/jpeg", "traceparent": header},
    )
    assert r.status_code == 200
    return trace_id, parent


def test_an_http_request_continues_the_callers_trace_with_its_stages(traced, receiver, image):
    trace_id, parent = classify_traced(traced, image)
    spans = trace_of(receiver, trace_id, {"POST /v1/classify"} | STAGES)
    root = spans["POST /v1/classify"]
    assert root.parent_id == parent and root.kind == SERVER
    assert root.service == "resnet-serve-test"
    assert root.attributes["http.route"] == "/v1/classify"
    assert root.attributes["http.request.method"] == "POST"
    assert root.attributes["http.response.status_code"] == 200
    check_children(spans, root)


def test_the_accelerator_process_links_its_batch_to_the_request(traced, receiver, image):
    """The item's traceparent crosses to the accelerator process (wire/messages.Item.trace),
    whose batch span links back to the request's span."""
    trace_id, _ = classify_traced(traced, image)
    root = trace_of(receiver, trace_id, {"POST /v1/classify"})["POST /v1/classify"]
    spans = receiver.wait_for(
        lambda s: any((trace_id, root.span_id) in x.links for x in s if x.name.startswith("batch"))
    )
    (batch,) = [x for x in spans if (trace_id, root.span_id) in x.links]
    assert batch.name == "batch default/model" and batch.parent_id == ""
    assert batch.trace_id != trace_id  # a root of its own: one batch serves many requests
    assert batch.attributes["batch.size"] >= 1 and batch.end_ns > batch.start_ns


def test_a_framework_route_is_traced_the_same_way(traced, receiver, image):
    """A multipart body takes FastAPI's route, not the raw-image fast path."""
    trace_id, parent, header = new_parent()
    r = httpx.post(
        traced.url + "/v1/classify",
        files=[("images", ("a.jpg", image, "image/jpeg")), ("images", ("b.jpg", image))],
        headers={"traceparent": header},
    )
    assert r.status_code == 200, r.text
    spans = receiver.wait_for(  # the root ends last: it may come in a later export
        lambda s: (
            sum(x.trace_id == trace_id and x.name == "decode" for x in s) == 2
            and any(x.trace_id == trace_id and x.kind == SERVER for x in s)
        )
    )
    mine = [s for s in spans if s.trace_id == trace_id]
    (root,) = [s for s in mine if s.kind == SERVER]
    assert root.name == "POST /v1/classify" and root.parent_id == parent
    assert sorted(s.name for s in mine if s.parent_id == root.span_id) == sorted(
        ["read body", "decode", "decode", "queue wait", "queue wait", "inference", "inference"]
        + ["answer"]
    )


def test_a_v2_http_request_is_traced_with_its_route_template(traced, receiver, image):
    import tritonclient.http as httpclient

    trace_id, parent, header = new_parent()
    client = httpclient.InferenceServerClient(traced.url.removeprefix("http://"))
    tensor = httpclient.InferInput("images", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=np.object_), binary_data=True)
    client.infer("default", [tensor], headers={"traceparent": header})
    client.close()
    name = "POST /v2/models/{name}/infer"
    spans = trace_of(receiver, trace_id, {name} | STAGES)
    assert spans[name].parent_id == parent
    check_children(spans, spans[name])


def test_a_grpc_call_continues_the_callers_trace_from_its_metadata(traced, receiver, image):
    import tritonclient.grpc as grpcclient

    trace_id, parent, header = new_parent()
    client = grpcclient.InferenceServerClient(traced.grpc)
    tensor = grpcclient.InferInput("images", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=np.object_))
    client.infer("default", [tensor], headers={"traceparent": header})
    client.close()
    name = "inference.GRPCInferenceService/ModelInfer"
    spans = trace_of(receiver, trace_id, {name, "decode", "queue wait", "inference", "answer"})
    root = spans[name]
    assert root.parent_id == parent and root.kind == SERVER
    assert root.attributes["rpc.system"] == "grpc"
    assert root.attributes["rpc.method"] == "ModelInfer"
    assert root.attributes["rpc.grpc.status_code"] == 0
    check_children(spans, root)


def test_a_5xx_answer_and_the_access_log_carry_the_trace_id(traced, receiver, image):
    trace_id, _, header = new_parent()
    r = httpx.post(
        traced.url + "/v1/classify?pipeline=slow",  # held 3 s: past the 300 ms deadline
        content=image,
        headers={
            "content-type": "image/jpeg",
            "traceparent": header,
            "X-Request-Timeout-Ms": "300",
        },
    )
    assert r.status_code == 504
    body = r.json()
    assert body["error"]["code"] == "deadline_exceeded"
    assert body["trace_id"] == trace_id
    spans = trace_of(receiver, trace_id, {"POST /v1/classify"})
    assert spans["POST /v1/classify"].status == 2  # ERROR
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in traced.log().splitlines() if x.startswith("{")]
        mine = [x for x in lines if x.get("logger") == "service.access"]
        found = [x for x in mine if x.get("trace_id") == trace_id]
        if found:
            break
        time.sleep(0.1)
    (line,) = found
    assert line["status"] == 504 and line["route"] == "/v1/classify"


def test_without_a_traceparent_each_request_starts_a_trace(traced, receiver, image):
    r = httpx.post(
        traced.url + "/v1/classify", content=image, headers={"content-type": "image/jpeg"}
    )
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in traced.log().splitlines() if x.startswith("{")]
        found = [x for x in lines if x.get("request_id") == rid and "trace_id" in x]
        if found:
            break
        time.sleep(0.1)
    trace_id = found[0]["trace_id"]
    spans = trace_of(receiver, trace_id, {"POST /v1/classify"})
    assert spans["POST /v1/classify"].parent_id == ""


# -- in this process: the switch, and the accelerator's batch span ----------------------------


def test_traces_are_off_unless_the_otel_variables_ask():
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"})
    assert not tracing.wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing.ENABLED  # this test process has no OTEL_* variables
    # Off, the hooks allocate nothing: one shared no-op context manager, no ids.
    assert tracing.span("decode") is tracing.span("answer")
    assert tracing.traceparent() is None and tracing.trace_id() is None
    assert tracing.now_ns() == 0


def test_a_5xx_body_has_no_trace_id_when_traces_are_off(make_client, image):
    client = make_client()
    r = client.post(
        "/v1/classify",
        content=image,
        headers={"content-type": "image/jpeg", "X-Request-Timeout-Ms": "0.001"},
    )
    assert r.status_code == 504 and "trace_id" not in r.json()


def test_the_batch_span_links_the_requests_it_served(receiver, monkeypatch):
    """What the accelerator process records per executed batch (its call site: the batcher,
    with each item's traceparent carried across the process boundary)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "accelerator-test")
    assert tracing.configure({"OTEL_TRACES_EXPORTER": "otlp"})
    try:
        (a, a_span, a_tp), (b, b_span, b_tp) = new_parent(), new_parent()
        start = time.time_ns()
        tracing.batch_span([a_tp, None, b_tp], "default", "model", 3, 4, start, start + 5_000_000)
    finally:
        tracing.shutdown()  # exports, and turns traces off again for the other tests
    assert not tracing.ENABLED
    spans = receiver.wait_for(lambda s: any(x.service == "accelerator-test" for x in s))
    (batch,) = [s for s in spans if s.service == "accelerator-test"]
    assert batch.name == "batch default/model" and batch.parent_id == ""
    assert batch.links == [(a, a_span), (b, b_span)]
    assert batch.attributes["batch.size"] == 3 and batch.attributes["batch.padded_size"] == 4
    assert batch.end_ns - batch.start_ns == 5_000_000
