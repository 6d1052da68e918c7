"""The gRPC port against clients of other gRPC implementations than grpcio's: grpc-go (what
Kubernetes' gRPC probes are written on) and grpc-js (Node's own HTTP/2), on the shared server,
whose gRPC port the native server serves (``SERVE_GRPC_SERVER``'s default), straight and
through the two HTTP/2 proxies a gRPC backend commonly sits behind: nginx's ``grpc_pass``
(ingress-nginx) and HAProxy (``tests/support/proxies.py``). A proxy is a client of its own to
the server: its HTTP/2 settings, windows, header order and trailers are its implementation's.

Each client (``tests/support/interop/``, built by ``make grpc-clients``, a prerequisite of
``make test``) takes a list of calls as JSON, makes them in turn on one connection with raw
bytes, and prints their outcomes. The answers are checked here: against Keras for inference,
against the protocol for the rest.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from service.grpc.generated import grpc_service_pb2 as pb
from service.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from tests.support.proxies import PROXIES, start_proxy, stop_proxy

ROOT = Path(__file__).resolve().parents[3]
CLIENTS = ROOT / ".tools" / "grpc-clients"
COMMANDS = {
    "grpc-go": [str(CLIENTS / "grpc-go")],
    "grpc-js": ["node", str(CLIENTS / "grpc-js" / "client.js")],
}
SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
ATOL = 1e-5


def _code(name: str) -> str:
    """grpc-go's ``NotFound`` and grpc-js's ``NOT_FOUND`` as one name (grpc-go spells
    ``Canceled``)."""
    code = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", name).upper()
    return "CANCELLED" if code == "CANCELED" else code


@pytest.fixture(scope="module")
def routes(server, tmp_path_factory):
    """The shared server's gRPC address, straight and through each proxy."""
    folder = tmp_path_factory.mktemp("proxies")
    started = {name: start_proxy(name, server.grpc, folder / name) for name in PROXIES}
    yield {"direct": server.grpc, **{name: address for name, (_, address) in started.items()}}
    for process, _ in started.values():
        stop_proxy(process)


@pytest.fixture(
    params=[(impl, route) for route in ("direct", *PROXIES) for impl in sorted(COMMANDS)],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def client(request, routes):
    """Runs a list of calls through one client implementation, straight or through a proxy;
    their outcomes back."""
    impl, route = request.param
    command = COMMANDS[impl]
    if not Path(command[-1]).exists():
        pytest.fail(f"{command[-1]} is not built: run `make grpc-clients` (make test does)")

    def run(*calls: dict) -> list[dict]:
        done = subprocess.run(
            [*command, routes[route]],
            input=json.dumps(list(calls)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        outcomes = json.loads(done.stdout)
        for outcome in outcomes:
            outcome["code"] = _code(outcome["code"])
            outcome["answers"] = [bytes.fromhex(a) for a in outcome["answers"] or []]
        return outcomes

    return run


def _unary(path: str, message: bytes, **kw) -> dict:
    return {"path": path, "kind": "unary", "messages": [message.hex()], **kw}


def _infer(model_name: str, pixels: np.ndarray, rid: str) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="pixels", datatype="UINT8", shape=list(pixels.shape)
    )
    return pb.ModelInferRequest(
        model_name=model_name, id=rid, inputs=[tensor], raw_input_contents=[pixels.tobytes()]
    )


def _probabilities(answer: pb.ModelInferResponse) -> np.ndarray:
    shape = list(answer.outputs[0].shape)
    return np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(shape)


def test_health_and_metadata(client):
    check = "/grpc.health.v1.Health/Check"
    ready, unknown, live, nope = client(
        _unary(check, health_pb2.HealthCheckRequest(service="").SerializeToString()),
        _unary(check, health_pb2.HealthCheckRequest(service="nope").SerializeToString()),
        _unary("/inference.GRPCInferenceService/ServerLive", b""),
        _unary("/inference.GRPCInferenceService/NoSuchMethod", b""),
    )
    assert ready["code"] == "OK" and ready["answers"] == [SERVING.SerializeToString()]
    assert unknown["code"] == "NOT_FOUND" and "unknown service 'nope'" in unknown["message"]
    assert pb.ServerLiveResponse.FromString(live["answers"][0]).live
    assert nope["code"] == "UNIMPLEMENTED", nope


def test_model_infer_matches_keras(client, model_name, pixels, reference):
    request = _infer(model_name, pixels, "interop-1").SerializeToString()
    (answer,) = client(_unary("/inference.GRPCInferenceService/ModelInfer", request))
    assert answer["code"] == "OK", answer
    response = pb.ModelInferResponse.FromString(answer["answers"][0])
    assert response.id == "interop-1"
    np.testing.assert_allclose(_probabilities(response), reference(pixels), atol=ATOL)


def test_errors_carry_the_services_message(client, model_name):
    infer = "/inference.GRPCInferenceService/ModelInfer"
    garbage, unknown_model = client(
        _unary(infer, b"\xff" * 200_000),
        _unary(infer, pb.ModelInferRequest(model_name="no-such-model").SerializeToString()),
    )
    assert garbage["code"] == "INVALID_ARGUMENT"
    assert "not a valid inference.ModelInferRequest" in garbage["message"]
    assert unknown_model["code"] == "NOT_FOUND" and "no-such-model" in unknown_model["message"]


def test_stream_infer_answers_in_order(client, model_name, pixels, reference):
    order = (0, 1, 0)
    requests = [_infer(model_name, pixels[i : i + 1], f"s{n}") for n, i in enumerate(order)]
    (outcome,) = client(
        {
            "path": "/inference.GRPCInferenceService/ModelStreamInfer",
            "kind": "bidi",
            "messages": [r.SerializeToString().hex() for r in requests],
        }
    )
    assert outcome["code"] == "OK", outcome
    answers = [pb.ModelStreamInferResponse.FromString(a) for a in outcome["answers"]]
    assert [a.infer_response.id for a in answers] == ["s0", "s1", "s2"]
    assert not any(a.error_message for a in answers)
    for i, answer in zip(order, answers, strict=True):
        got = _probabilities(answer.infer_response)
        np.testing.assert_allclose(got, reference(pixels[i : i + 1]), atol=ATOL)


def test_health_watch_streams_the_status(client):
    (outcome,) = client(
        {
            "path": "/grpc.health.v1.Health/Watch",
            "kind": "server_stream",
            "messages": [health_pb2.HealthCheckRequest(service="").SerializeToString().hex()],
            "max_answers": 1,
        }
    )
    assert outcome["answers"] == [SERVING.SerializeToString()]
    assert outcome["code"] == "CANCELLED"  # the client's own cancel after the first answer


@pytest.mark.parametrize("route", ["direct", *PROXIES])
def test_many_calls_at_once_through_one_connection(routes, route, model_name, pixels, reference):
    """64 unary calls in flight at once on one grpcio channel, and a stream of 32 messages
    beside them, which a proxy carries to the server on connections of its own: every answer
    checked against its request."""
    expected = reference(pixels)
    with grpc.insecure_channel(routes[route]) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = [
            stub.ModelInfer.future(_infer(model_name, pixels[i % 2 : i % 2 + 1], f"u{i}"))
            for i in range(64)
        ]
        stream = stub.ModelStreamInfer(
            iter([_infer(model_name, pixels[i % 2 : i % 2 + 1], f"s{i}") for i in range(32)])
        )
        answers = [a.infer_response for a in stream]
        for i, call in enumerate(calls):
            response = call.result(timeout=60)
            assert response.id == f"u{i}"
            np.testing.assert_allclose(_probabilities(response)[0], expected[i % 2], atol=ATOL)
    assert [a.id for a in answers] == [f"s{i}" for i in range(32)]
    for i, answer in enumerate(answers):
        np.testing.assert_allclose(_probabilities(answer)[0], expected[i % 2], atol=ATOL)
