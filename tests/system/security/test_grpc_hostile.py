"""The gRPC port under hostile clients: malformed and incomplete calls, long inputs, floods of
raw HTTP/2 frames (written with ``h2``), against a real server with authentication on: once
with grpcio's server and once with the native one (``SERVE_GRPC_SERVER``).

Every flood asserts what the client is answered, that a normal call is served right after it,
and that the front end's resident memory is back within :data:`RSS_MARGIN` of its baseline
once the flood's connections are gone (docs/RELIABILITY.md, "HTTP/2 and gRPC"). One front
end, so that every connection lands on the process whose memory is measured.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import hpack
import httpx
import psutil
import pytest
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.grpc.generated import grpc_service_pb2 as pb
from tests.support.h2raw import RawH2, frame, grpc_frame, grpc_headers
from tests.support.harness import engine, frontends
from tests.support.helpers import Server, start_server, stop_server

TOKEN = "hostile-test-token"
AUTH = [("authorization", f"Bearer {TOKEN}")]
MESSAGE_BYTES = 1024 * 1024
MESSAGE_TIMEOUT_S = 1
STREAMS = 32
# How far above its baseline a front end's resident memory may stay once a flood is over
# (what the allocator keeps: the floods push up to 32 MB through one connection).
RSS_MARGIN = 64 * 1024 * 1024
REFUSED_STREAM = 7
INFER = "/inference.GRPCInferenceService/ModelInfer"
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
INFERENCE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


@pytest.fixture(scope="module", params=["grpcio", "native"])
def hostile(request, tiny_model_file, tmp_path_factory) -> Iterator[Server]:
    """The server, once with each gRPC server (``SERVE_GRPC_SERVER``)."""
    srv = start_server(
        {
            "SERVE_GRPC_SERVER": request.param,
            "SERVE_WEIGHTS": str(tiny_model_file),
            "SERVE_AUTH_TOKENS": TOKEN,
            "SERVE_FRONTEND_PROCESSES": "1",
            "SERVE_PREPROCESS_WORKERS": "1",
            "SERVE_GRPC_MAX_MESSAGE_BYTES": str(MESSAGE_BYTES),
            "SERVE_GRPC_MESSAGE_TIMEOUT_S": str(MESSAGE_TIMEOUT_S),
            "SERVE_GRPC_MAX_CONCURRENT_STREAMS": str(STREAMS),
        },
        tmp_path_factory.mktemp("grpc-hostile") / "server.log",
    )
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def model_name(hostile) -> str:
    r = httpx.get(f"{hostile.url}/v1/models", headers={"authorization": f"Bearer {TOKEN}"})
    return r.json()["models"][0]["name"]


@pytest.fixture(scope="module")
def channel(hostile) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(hostile.grpc) as ch:
        yield ch


def _raw(channel: grpc.Channel, method, service) -> grpc.UnaryUnaryMultiCallable:
    """A call of ``method`` taking and answering bytes (no serializers)."""
    path = f"/{service.full_name}/{method.name}"
    if method.client_streaming:
        return channel.stream_stream(path)
    if method.server_streaming:
        return channel.unary_stream(path)
    return channel.unary_unary(path)


def _call_raw(channel, service, method, data: bytes, metadata=AUTH, timeout=10) -> grpc.RpcError:
    call = _raw(channel, method, service)
    with pytest.raises(grpc.RpcError) as exc:
        if method.client_streaming:
            list(call(iter([data]), metadata=metadata, timeout=timeout))
        elif method.server_streaming:
            list(call(data, metadata=metadata, timeout=timeout))
        else:
            call(data, metadata=metadata, timeout=timeout)
    return exc.value


def _methods():
    for service in (INFERENCE, HEALTH, REFLECTION):
        for method in service.methods:
            yield pytest.param(service, method, id=f"{service.name}.{method.name}")


def _served(channel: grpc.Channel) -> None:
    """A normal call is answered."""
    stub = health_pb2_grpc.HealthStub(channel)
    answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    ready = channel.unary_unary(
        "/inference.GRPCInferenceService/ServerReady",
        request_serializer=pb.ServerReadyRequest.SerializeToString,
        response_deserializer=pb.ServerReadyResponse.FromString,
    )
    assert ready(pb.ServerReadyRequest(), metadata=AUTH, timeout=10).ready


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


@pytest.fixture(scope="module")
def processes(hostile, channel) -> dict[str, int]:
    """The pids of the one front end and the accelerator process, after a warm-up."""
    for _ in range(20):
        _served(channel)
    return {"frontend": frontends(hostile.process.pid)[0], "engine": engine(hostile.process.pid)}


@pytest.fixture
def bounded_memory(processes, channel):
    """Asserts after the test that a normal call is served and the front end's memory is
    back within RSS_MARGIN of what it was before."""
    pid = processes["frontend"]
    before = _rss(pid)
    yield
    _served(channel)
    deadline = time.monotonic() + 5  # freed calls and connections are released by gRPC's loop
    while _rss(pid) > before + RSS_MARGIN and time.monotonic() < deadline:
        time.sleep(0.2)
    after = _rss(pid)
    print(f"front end RSS {before / 1e6:.0f} -> {after / 1e6:.0f} MB")
    assert after <= before + RSS_MARGIN, f"front end RSS {before / 1e6:.0f} -> {after / 1e6:.0f} MB"


# -- malformed and bounded messages ---------------------------------------------------------


@pytest.mark.parametrize(("service", "method"), list(_methods()))
def test_bytes_that_are_not_the_message_are_invalid_argument(channel, service, method):
    error = _call_raw(channel, service, method, b"\xff\xff\xff\xff not a protobuf")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    expected = f"the request is not a valid {method.input_type.full_name} protobuf message"
    assert expected in error.details()
    assert "class" not in error.details() and "DecodeError" not in error.details()
    assert dict(error.trailing_metadata())["x-error-code"] == "invalid_message"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x0a\x02\xff\xfe", id="model_name-not-utf8"),
        pytest.param(b"\x0a\x40abc", id="length-past-the-end"),
        pytest.param(b"\x0f", id="invalid-wire-type"),
    ],
)
def test_model_infer_that_does_not_parse_is_invalid_argument(channel, data):
    method = INFERENCE.methods_by_name["ModelInfer"]
    error = _call_raw(channel, INFERENCE, method, data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest" in error.details()


def test_a_small_method_refuses_a_large_message(channel):
    request = pb.ModelConfigRequest(name="m" * 200_000).SerializeToString()
    method = INFERENCE.methods_by_name["ModelConfig"]
    error = _call_raw(channel, INFERENCE, method, request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "takes at most 65536" in error.details()


def test_a_message_over_the_limit_is_resource_exhausted(channel):
    method = INFERENCE.methods_by_name["ModelInfer"]
    error = _call_raw(channel, INFERENCE, method, b"\0" * (MESSAGE_BYTES + 1))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("method", "request_message", "code"),
    [
        ("ModelInfer", pb.ModelInferRequest(model_name="m" * 65536), "NOT_FOUND"),
        ("ModelConfig", pb.ModelConfigRequest(name="m" * 60_000), "NOT_FOUND"),
        ("ModelMetadata", pb.ModelMetadataRequest(name="é" * 30_000), "NOT_FOUND"),
        ("ModelInfer", "input name", "INVALID_ARGUMENT"),
        ("Check", health_pb2.HealthCheckRequest(service="s" * 60_000), "NOT_FOUND"),
    ],
)
def test_errors_quote_long_input_truncated_so_the_client_reads_them(
    channel, model_name, method, request_message, code
):
    if request_message == "input name":  # an input of a 60,000-character name
        tensor = pb.ModelInferRequest.InferInputTensor(
            name="x" * 60_000, datatype="BYTES", shape=[1]
        )
        request_message = pb.ModelInferRequest(
            model_name=model_name, inputs=[tensor], raw_input_contents=[b"\1\0\0\0a"]
        )
    service = HEALTH if method == "Check" else INFERENCE
    descriptor = service.methods_by_name[method]
    # The client's default limits: a status message it cannot read would be refused by its
    # own library (RESOURCE_EXHAUSTED: received metadata size exceeds hard limit).
    error = _call_raw(channel, service, descriptor, request_message.SerializeToString())
    assert error.code().name == code, error
    assert len(error.details().encode()) <= 1024
    assert "left out" in error.details()


def test_http_errors_quote_long_input_truncated(hostile, model_name):
    body = {"inputs": [{"name": "x" * 100_000, "datatype": "BYTES", "shape": [1], "data": ["a"]}]}
    r = httpx.post(
        f"{hostile.url}/v2/models/{model_name}/infer",
        json=body,
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    assert r.status_code == 400
    message = r.json()["error"]
    assert "unexpected inference input" in message and "left out" in message
    assert len(message.encode()) <= 1024


# -- authentication -------------------------------------------------------------------------


def test_reflection_needs_the_token_and_health_does_not(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    with pytest.raises(grpc.RpcError) as exc:
        list(stub.ServerReflectionInfo(iter([ask]), timeout=10))
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    bad = (("authorization", "Bearer wrong"),)
    with pytest.raises(grpc.RpcError) as exc:
        list(stub.ServerReflectionInfo(iter([ask]), metadata=bad, timeout=10))
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    answers = list(stub.ServerReflectionInfo(iter([ask]), metadata=AUTH, timeout=10))
    names = {s.name for s in answers[0].list_services_response.service}
    assert "inference.GRPCInferenceService" in names
    # Probes carry no token.
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1


@pytest.mark.parametrize("method", [m.name for m in INFERENCE.methods])
def test_every_inference_method_refuses_a_missing_token_before_its_message(channel, method):
    descriptor = INFERENCE.methods_by_name[method]
    # Garbage: the token is checked first, so the answer is UNAUTHENTICATED, not a parse error.
    error = _call_raw(channel, INFERENCE, descriptor, b"\xff\xff", metadata=())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


# -- incomplete calls -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "send",
    [
        pytest.param(lambda c: c.call(INFER, None, extra=AUTH), id="end-stream-on-headers"),
        pytest.param(lambda c: c.call(INFER, b"", extra=AUTH), id="empty-final-data"),
        pytest.param(
            lambda c: c.call(INFER, grpc_frame(b"x" * 10, announced=100), extra=AUTH),
            id="10-of-100-bytes",
        ),
    ],
)
def test_a_call_that_ends_without_its_message_is_answered(hostile, send):
    with RawH2(hostile.grpc) as conn:
        answer = conn.wait(send(conn), timeout_s=5)
    assert answer.grpc_status == grpc.StatusCode.INVALID_ARGUMENT.value[0], answer
    assert "ended without a complete request message" in answer.grpc_message


@pytest.mark.parametrize(
    "message", [None, grpc_frame(b"x" * 10, announced=100)], ids=["no-data", "10-of-100-bytes"]
)
def test_a_call_that_never_sends_its_message_is_answered_after_the_timeout(hostile, message):
    with RawH2(hostile.grpc) as conn:
        sid = conn.call(INFER, message, end=False, extra=AUTH)
        answer = conn.wait(sid, timeout_s=MESSAGE_TIMEOUT_S + 5)
    assert answer.grpc_status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0], answer
    assert "SERVE_GRPC_MESSAGE_TIMEOUT_S" in answer.grpc_message


# -- floods ---------------------------------------------------------------------------------


def test_rapid_resets(hostile, bounded_memory):
    """Streams opened and reset at once (CVE-2023-44487): gRPC refuses the connection's next
    streams (REFUSED_STREAM, safe to retry) or closes it; other connections are served."""
    with RawH2(hostile.grpc) as conn:
        try:
            for i in range(5000):
                sid = conn.call(INFER, grpc_frame(b"\xff" * 1000), end=False)
                conn.reset(sid)
                if i % 500 == 0:
                    conn.pump(time.monotonic() + 0.01)
        except OSError:  # the server closed the connection under us
            conn.closed = True
        if not conn.closed:
            sid = conn.call(
                "/grpc.health.v1.Health/Check",
                grpc_frame(health_pb2.HealthCheckRequest().SerializeToString()),
            )
            answer = conn.wait(sid)
            assert answer.grpc_status == 0 or answer.reset == REFUSED_STREAM, answer


def test_continuation_flood_closes_the_connection(hostile, bounded_memory):
    """A header block that never ends: refused once past the hard metadata limit."""
    with RawH2(hostile.grpc) as conn:
        conn.pump(time.monotonic() + 0.3)  # the server's SETTINGS acknowledged
        block = hpack.Encoder().encode(grpc_headers(hostile.grpc, INFER), huffman=False)
        conn.send_raw(frame(0x1, 0, 1, block))  # HEADERS without END_HEADERS
        pad = hpack.Encoder()
        try:
            for i in range(4000):  # 4 MB, never END_HEADERS
                conn.send_raw(frame(0x9, 0, 1, pad.encode([(f"x-{i}", "a" * 1000)], False)))
        except OSError:
            pass  # the server closed it while we were still writing
        deadline = time.monotonic() + 5
        while conn.pump(deadline) and time.monotonic() < deadline:
            pass
        assert conn.closed


def test_metadata_over_the_limit_is_refused(hostile, bounded_memory):
    with RawH2(hostile.grpc) as conn:
        conn.pump(time.monotonic() + 0.3)
        sid = conn.call(INFER, grpc_frame(b""), extra=[("x-big", "a" * 40_000)])
        answer = conn.wait(sid, timeout_s=5)
    assert answer.grpc_status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], answer
    assert "metadata size exceeds" in answer.grpc_message


def test_metadata_before_settings_are_acknowledged(hostile, bounded_memory):
    """32 streams of 512 KB of metadata sent before the server's SETTINGS are acknowledged (so
    its header limits are not in force yet) and held open: the connection is closed within
    the handshake timeout."""
    with RawH2(hostile.grpc) as conn:
        try:
            for _ in range(STREAMS):
                conn.call(INFER, None, end=False, extra=[("x-big", "a" * 512_000)])
        except OSError:
            pass
        deadline = time.monotonic() + 15
        while not conn.closed and time.monotonic() < deadline:
            # Read, but never acknowledge: the frames are taken straight off the socket.
            conn.sock.settimeout(0.5)
            try:
                if not conn.sock.recv(1 << 20):
                    conn.closed = True
            except TimeoutError:
                pass
            except OSError:
                conn.closed = True
        assert conn.closed


def test_settings_flood(hostile, bounded_memory):
    with RawH2(hostile.grpc) as conn:
        conn.pump(time.monotonic() + 0.3)
        try:
            for _ in range(20_000):
                conn.send_raw(frame(0x4, 0, 0, b""))
        except OSError:
            pass
        deadline = time.monotonic() + 3
        while conn.pump(deadline) and time.monotonic() < deadline:
            pass
        if not conn.closed:  # the acknowledgements were read: the connection still serves
            sid = conn.call(
                "/grpc.health.v1.Health/Check",
                grpc_frame(health_pb2.HealthCheckRequest().SerializeToString()),
            )
            assert conn.wait(sid).grpc_status == 0


def test_ping_flood_gets_goaway(hostile, bounded_memory):
    with RawH2(hostile.grpc) as conn:
        conn.pump(time.monotonic() + 0.3)
        try:
            for i in range(10_000):
                conn.send_raw(frame(0x6, 0, 0, i.to_bytes(8, "big")))
                if i % 100 == 99:  # read what came, to see the GOAWAY before the reset
                    while conn.pump(time.monotonic() + 0.001):
                        pass
                    if conn.goaway or conn.closed:
                        break
        except OSError:
            pass  # closed under us
        deadline = time.monotonic() + 5
        while conn.pump(deadline) and time.monotonic() < deadline:
            pass
        assert conn.closed
        assert conn.goaway is not None and conn.goaway.error_code == 11  # ENHANCE_YOUR_CALM
        assert conn.goaway.additional_data == b"too_many_pings"


def test_garbage_messages_at_the_limit(hostile, bounded_memory):
    """Twenty messages of the largest size, each refused INVALID_ARGUMENT."""
    for _ in range(20):
        with RawH2(hostile.grpc) as conn:
            conn.pump(time.monotonic() + 0.3)
            sid = conn.call(INFER, grpc_frame(b"\xff" * (MESSAGE_BYTES - 5)), extra=AUTH)
            answer = conn.wait(sid, timeout_s=10)
            assert answer.grpc_status == grpc.StatusCode.INVALID_ARGUMENT.value[0], answer


def test_oversized_and_never_ending_streams(hostile, bounded_memory):
    with RawH2(hostile.grpc) as conn:
        conn.pump(time.monotonic() + 0.3)
        big = conn.call(INFER, grpc_frame(b"\0" * (4 * MESSAGE_BYTES)), extra=AUTH)
        endless = conn.call(
            INFER, grpc_frame(b"\0" * 1000, announced=MESSAGE_BYTES), end=False, extra=AUTH
        )
        assert conn.wait(big).grpc_status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        answer = conn.wait(endless, timeout_s=MESSAGE_TIMEOUT_S + 5)
        assert answer.grpc_status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


def test_many_idle_streams(hostile, bounded_memory):
    """Four connections of 100 idle streams each: the server takes STREAMS per connection,
    refuses the rest, and answers every stream it took once the message timeout passes."""
    conns = [RawH2(hostile.grpc) for _ in range(4)]
    try:
        for conn in conns:
            conn.pump(time.monotonic() + 0.3)
            assert conn.remote_max_streams == STREAMS
        streams = []
        for conn in conns:
            for _ in range(100):
                try:
                    streams.append((conn, conn.call(INFER, None, end=False, extra=AUTH)))
                except Exception:  # h2 itself refuses past the advertised limit
                    break
        answers = [conn.wait(sid, timeout_s=MESSAGE_TIMEOUT_S + 5) for conn, sid in streams]
        taken = [a for a in answers if a.grpc_status is not None]
        assert len(taken) <= STREAMS * len(conns)
        assert all(a.grpc_status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0] for a in taken)
        assert all(a.ended for a in answers)
    finally:
        for conn in conns:
            conn.close()


def test_a_stream_of_requests_at_the_limit(channel, model_name, bounded_memory):
    """Forty requests of the largest size on one ``ModelStreamInfer`` stream, sent at once
    (the stream reads on only as answers free its budget): each answered in the stream, in
    order, with what is wrong with it."""
    junk = b"\xff" * (MESSAGE_BYTES - 1024)
    requests = [
        pb.ModelInferRequest(
            model_name=model_name,
            id=str(i),
            inputs=[
                pb.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[1])
            ],
            raw_input_contents=[len(junk).to_bytes(4, "little") + junk],
        ).SerializeToString()
        for i in range(40)
    ]
    call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
    answers = [
        pb.ModelStreamInferResponse.FromString(raw)
        for raw in call(iter(requests), metadata=AUTH, timeout=60)
    ]
    assert [a.infer_response.id for a in answers] == [str(i) for i in range(40)]
    assert all("image" in a.error_message for a in answers), answers[0].error_message
    codes = {a.infer_response.parameters["grpc-status"].string_param for a in answers}
    assert codes == {"INVALID_ARGUMENT"}


def test_the_accelerator_process_does_not_grow_with_hostile_calls(processes, channel):
    """Refused calls never reach the accelerator process: its memory stays where it was."""
    pid = processes["engine"]
    before = _rss(pid)
    method = INFERENCE.methods_by_name["ModelInfer"]
    for _ in range(20):
        _call_raw(channel, INFERENCE, method, b"\xff" * (MESSAGE_BYTES - 64))
    _served(channel)
    assert _rss(pid) <= before + 16 * 1024 * 1024


def test_every_message_class_is_known():
    """The gate finds the message class of every method it registers."""
    for service in (INFERENCE, HEALTH, REFLECTION):
        for method in service.methods:
            assert GetMessageClass(method.input_type)().DESCRIPTOR is method.input_type
