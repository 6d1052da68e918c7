"""KServe V2 streaming inference (``ModelStreamInfer``) against the real server: Triton's own
streaming client, and raw streams for what it does not show (order, ids, the stream's end)."""

from __future__ import annotations

import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb

from loadtest.common import delta, scrape

ATOL = 1e-5
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"


def _images_input(files: list[bytes]):
    tensor = grpcclient.InferInput("images", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=np.object_))
    return tensor


def _pixels_input(pixels: np.ndarray):
    tensor = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels.astype(np.uint8))
    return tensor


def _stream(client: grpcclient.InferenceServerClient, calls) -> list[tuple]:
    """Sends ``calls`` (keyword arguments of ``async_stream_infer``) on one stream; the
    callbacks' ``(result, error)`` pairs, once every call is answered."""
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for call in calls:
            client.async_stream_infer(**call)
        return [answers.get(timeout=60) for _ in calls]
    finally:
        client.stop_stream()


@pytest.fixture
def stream_client(server):
    """A client of its own: a tritonclient client holds one stream at a time."""
    client = grpcclient.InferenceServerClient(server.grpc)
    yield client
    client.close()


def test_a_stream_answers_each_request_as_model_infer_does(
    stream_client, model_name, images, pixels, decoded, reference
):
    calls = []
    for i in range(4):
        calls.append(
            dict(model_name=model_name, inputs=[_images_input(images)], request_id=f"f{i}")
        )
        calls.append(
            dict(model_name=model_name, inputs=[_pixels_input(pixels)], request_id=f"p{i}")
        )
    answers = _stream(stream_client, calls)
    assert [error for _, error in answers] == [None] * len(calls)
    ids = [result.get_response().id for result, _ in answers]
    assert ids == [call["request_id"] for call in calls]
    for result, _ in answers:
        probs = result.as_numpy("probabilities")
        expected = reference(decoded(images) if result.get_response().id[0] == "f" else pixels)
        np.testing.assert_allclose(probs, expected, atol=ATOL)
        assert result.get_response().model_name == model_name


def test_a_failed_request_is_answered_in_the_stream_and_it_goes_on(
    stream_client, model_name, pixels, reference
):
    good = dict(model_name=model_name, inputs=[_pixels_input(pixels)])
    calls = [
        good,
        dict(model_name="no-such-model", inputs=[_pixels_input(pixels)]),
        good,
        dict(model_name=model_name, inputs=[_images_input([b"not an image"])]),
        good,
    ]
    answers = _stream(stream_client, calls)
    errors = [None if error is None else error.message() for _, error in answers]
    assert errors[0] is None and errors[2] is None and errors[4] is None, errors
    assert "unknown model 'no-such-model'" in errors[1], errors[1]
    assert "image" in errors[3].lower(), errors[3]
    for i in (0, 2, 4):
        np.testing.assert_allclose(
            answers[i][0].as_numpy("probabilities"), reference(pixels), atol=ATOL
        )


def _request(model_name: str, pixels: np.ndarray, rid: str) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name=model_name,
        id=rid,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="pixels", datatype="UINT8", shape=list(pixels.shape)
            )
        ],
        raw_input_contents=[pixels.astype(np.uint8).tobytes()],
    )


def test_answers_come_in_the_order_of_the_requests(grpc_stub, model_name, pixels, reference):
    """Requests of 1 to 8 images, read while the earlier ones run: the answers still come in
    the stream's order, each with its request's id (an error's too)."""
    sizes = [8, 1, 5, 1, 2, 8, 1, 3, 1, 1, 7, 1]
    batch = np.concatenate([pixels] * 4)
    requests = [_request(model_name, batch[:n], f"r{i}") for i, n in enumerate(sizes)]
    requests.insert(6, _request("no-such-model", pixels, "lost-model"))
    answers = list(grpc_stub.ModelStreamInfer(iter(requests), timeout=60))
    assert [a.infer_response.id for a in answers] == [r.id for r in requests]
    for request, answer in zip(requests, answers, strict=True):
        if request.id == "lost-model":
            assert "unknown model 'no-such-model'" in answer.error_message
            params = answer.infer_response.parameters
            assert params["grpc-status"].string_param == "NOT_FOUND"
            assert params["x-error-code"].string_param == "model_not_found"
            continue
        assert answer.error_message == ""
        n = request.inputs[0].shape[0]
        probs = np.frombuffer(answer.infer_response.raw_output_contents[0], np.float32)
        np.testing.assert_allclose(probs.reshape(n, -1), reference(batch[:n]), atol=ATOL)


def test_a_message_that_is_not_a_request_ends_the_stream_after_the_answers(
    server, model_name, pixels
):
    failed = (
        'serve_request_failure_total{protocol="grpc",reason="invalid_message",'
        'route="ModelStreamInfer"}'
    )
    before = scrape(server.url)
    good = _request(model_name, pixels, "good").SerializeToString()
    with grpc.insecure_channel(server.grpc) as channel:
        call = channel.stream_stream(STREAM_INFER)(iter([good, good, b"\xff\xff not a protobuf"]))
        answers = []
        with pytest.raises(grpc.RpcError) as exc:
            for raw in call:
                answers.append(pb.ModelStreamInferResponse.FromString(raw))
    assert [a.infer_response.id for a in answers] == ["good", "good"]
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest" in exc.value.details()
    assert delta(scrape(server.url), before, failed) == 1


def test_each_request_of_a_stream_is_counted(server, stream_client, model_name, pixels):
    ok = 'serve_request_success_total{protocol="grpc",route="ModelStreamInfer"}'
    failed = (
        'serve_request_failure_total{protocol="grpc",reason="model_not_found",'
        'route="ModelStreamInfer"}'
    )
    before = scrape(server.url)
    good = dict(model_name=model_name, inputs=[_pixels_input(pixels)])
    _stream(stream_client, [good, good, dict(good, model_name="no-such-model"), good])
    after = scrape(server.url)
    assert delta(after, before, ok) == 3
    assert delta(after, before, failed) == 1
