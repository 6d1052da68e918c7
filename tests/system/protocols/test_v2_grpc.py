"""KServe V2 over gRPC through Triton's own gRPC client against the real server: the same
answers as over HTTP, checked against Keras; health, reflection, statistics."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

ATOL = 1e-5


def _images_input(client, files: list[bytes]):
    tensor = client.InferInput("images", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=np.object_))
    return tensor


def _pixels_input(client, pixels: np.ndarray, datatype: str):
    tensor = client.InferInput("pixels", list(pixels.shape), datatype)
    tensor.set_data_from_numpy(pixels.astype(np.float32 if datatype == "FP32" else np.uint8))
    return tensor


# -- health and metadata -------------------------------------------------------------------


def test_server_and_model_health(triton_grpc, model_name):
    assert triton_grpc.is_server_live()
    assert triton_grpc.is_server_ready()
    assert triton_grpc.is_model_ready(model_name)
    assert triton_grpc.is_model_ready(model_name, "1")
    assert triton_grpc.is_model_ready(f"{model_name}-pixels")
    # As tritonclient.http answers for the HTTP route's 404.
    assert not triton_grpc.is_model_ready("no-such-model")
    assert not triton_grpc.is_model_ready(model_name, "7")


def test_server_metadata_is_the_http_one(triton_grpc, triton):
    meta = triton_grpc.get_server_metadata(as_json=True)
    http = triton.get_server_metadata()
    assert meta["name"] == http["name"] == "resnet-serve"
    assert meta["version"] == http["version"]
    assert meta["extensions"] == http["extensions"]


@pytest.mark.parametrize("view", ["", "-pixels"], ids=["model", "pixels-view"])
def test_model_metadata_and_config_are_the_http_ones(triton_grpc, triton, model_name, view):
    name = model_name + view
    meta = triton_grpc.get_model_metadata(name)
    http = triton.get_model_metadata(name)
    assert meta.name == http["name"] and list(meta.versions) == http["versions"]
    for got, want in [(meta.inputs, http["inputs"]), (meta.outputs, http["outputs"])]:
        assert [(t.name, t.datatype, list(t.shape)) for t in got] == [
            (t["name"], t["datatype"], t["shape"]) for t in want
        ]
    config = triton_grpc.get_model_config(name).config
    http_config = triton.get_model_config(name)
    assert config.max_batch_size == http_config["max_batch_size"] > 0
    assert [(i.name, list(i.dims)) for i in config.input] == [
        (i["name"], i["dims"]) for i in http_config["input"]
    ]
    assert list(config.output[0].dims) == [10]
    assert list(config.dynamic_batching.preferred_batch_size) == [1, 2, 4, 8]


def test_unknown_model_metadata_is_not_found(triton_grpc):
    with pytest.raises(InferenceServerException) as exc:
        triton_grpc.get_model_metadata("no-such-model")
    assert exc.value.status() == "StatusCode.NOT_FOUND"
    assert "unknown model 'no-such-model'" in exc.value.message()


def test_repository_index_lists_the_models(triton_grpc, model_name):
    index = triton_grpc.get_model_repository_index(as_json=True)
    assert {"name": model_name, "version": "1", "state": "READY"} in index["models"]


# -- inference -----------------------------------------------------------------------------


def test_bytes_images_match_keras_and_http(
    triton_grpc, triton, model_name, images, decoded, reference
):
    result = triton_grpc.infer(model_name, [_images_input(grpcclient, images)])
    got = result.as_numpy("probabilities")
    assert got.dtype == np.float32 and got.shape == (3, 10)
    np.testing.assert_allclose(got, reference(decoded(images)), atol=ATOL)
    over_http = triton.infer(model_name, [_images_input(httpclient, images)])
    np.testing.assert_array_equal(got, over_http.as_numpy("probabilities"))
    # Triton's way: outputs raw when the input came raw.
    assert len(result.get_response().raw_output_contents) == 1


@pytest.mark.parametrize("datatype", ["FP32", "UINT8"])
def test_pixel_tensors_match_keras_and_http(
    triton_grpc, triton, model_name, pixels, reference, datatype
):
    result = triton_grpc.infer(model_name, [_pixels_input(grpcclient, pixels, datatype)])
    got = result.as_numpy("probabilities")
    np.testing.assert_allclose(got, reference(pixels), atol=ATOL)
    over_http = triton.infer(model_name, [_pixels_input(httpclient, pixels, datatype)])
    np.testing.assert_array_equal(got, over_http.as_numpy("probabilities"))


def test_the_pixels_view_answers_like_the_model(triton_grpc, model_name, pixels):
    whole = triton_grpc.infer(model_name, [_pixels_input(grpcclient, pixels, "FP32")])
    view = triton_grpc.infer(f"{model_name}-pixels", [_pixels_input(grpcclient, pixels, "FP32")])
    assert view.get_response().model_name == f"{model_name}-pixels"
    np.testing.assert_array_equal(view.as_numpy("probabilities"), whole.as_numpy("probabilities"))


def _typed_request(model_name: str, tensor: pb.ModelInferRequest.InferInputTensor, **kw):
    return pb.ModelInferRequest(model_name=model_name, inputs=[tensor], **kw)


def _fp32_output(response: pb.ModelInferResponse) -> np.ndarray:
    out = response.outputs[0]
    return np.asarray(out.contents.fp32_contents, np.float32).reshape(list(out.shape))


def test_typed_contents_in_and_out(grpc_stub, model_name, images, pixels, decoded, reference):
    # What grpcurl and hand-written clients send: values in the datatype's own field; the
    # answer then comes typed too.
    cases = [
        (pb.ModelInferRequest.InferInputTensor(
            name="images", datatype="BYTES", shape=[len(images)],
            contents=pb.InferTensorContents(bytes_contents=images),
        ), reference(decoded(images))),
        (pb.ModelInferRequest.InferInputTensor(
            name="pixels", datatype="FP32", shape=list(pixels.shape),
            contents=pb.InferTensorContents(fp32_contents=pixels.ravel().astype(float)),
        ), reference(pixels)),
        (pb.ModelInferRequest.InferInputTensor(
            name="pixels", datatype="UINT8", shape=list(pixels.shape),
            contents=pb.InferTensorContents(uint_contents=pixels.ravel().tolist()),
        ), reference(pixels)),
    ]  # fmt: skip
    for tensor, expected in cases:
        response = grpc_stub.ModelInfer(_typed_request(model_name, tensor, id="typed-1"))
        assert response.id == "typed-1" and response.model_version == "1"
        assert not response.raw_output_contents
        assert response.outputs[0].datatype == "FP32"
        np.testing.assert_allclose(_fp32_output(response), expected, atol=ATOL)


def test_binary_data_parameter_chooses_the_output_form(grpc_stub, model_name, pixels, reference):
    raw_in = pb.ModelInferRequest.InferInputTensor(
        name="pixels", datatype="UINT8", shape=list(pixels.shape)
    )
    typed_out = pb.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")
    typed_out.parameters["binary_data"].bool_param = False
    response = grpc_stub.ModelInfer(
        pb.ModelInferRequest(
            model_name=model_name,
            inputs=[raw_in],
            outputs=[typed_out],
            raw_input_contents=[pixels.tobytes()],
        )
    )
    assert not response.raw_output_contents
    np.testing.assert_allclose(_fp32_output(response), reference(pixels), atol=ATOL)


def test_classification_extension_returns_the_http_strings(
    triton_grpc, triton, model_name, images, decoded, reference
):
    outputs = [grpcclient.InferRequestedOutput("probabilities", class_count=5)]
    got = triton_grpc.infer(model_name, [_images_input(grpcclient, images)], outputs=outputs)
    strings = got.as_numpy("probabilities")
    assert strings.shape == (3, 5)
    expected = reference(decoded(images))
    for row, probs in zip(strings, expected, strict=True):
        parsed = [s.decode().split(":") for s in row]
        assert [int(p[1]) for p in parsed] == list(np.argsort(-probs)[:5])
        assert [p[2] for p in parsed] == [f"class_{p[1]}" for p in parsed]
    over_http = triton.infer(
        model_name,
        [_images_input(httpclient, images)],
        outputs=[httpclient.InferRequestedOutput("probabilities", class_count=5)],
    )
    assert strings.tolist() == over_http.as_numpy("probabilities").tolist()


def test_request_id_and_version(triton_grpc, model_name, pixels):
    result = triton_grpc.infer(
        model_name,
        [_pixels_input(grpcclient, pixels, "UINT8")],
        model_version="1",
        request_id="req-42",
    )
    response = result.get_response()
    assert response.id == "req-42" and response.model_version == "1"
    assert response.model_name == model_name


def test_gzip_compressed_calls(triton_grpc, model_name, pixels, reference):
    result = triton_grpc.infer(
        model_name,
        [_pixels_input(grpcclient, pixels, "UINT8")],
        compression_algorithm="gzip",
    )
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference(pixels), atol=ATOL)


# -- statistics and metrics ----------------------------------------------------------------


def _stats(client, name):
    return client.get_inference_statistics(name).model_stats[0]


def test_statistics_count_every_protocol(triton_grpc, triton, model_name, pixels):
    before = _stats(triton_grpc, model_name)
    triton_grpc.infer(model_name, [_pixels_input(grpcclient, pixels, "UINT8")])
    triton.infer(model_name, [_pixels_input(httpclient, pixels, "UINT8")])
    bad = grpcclient.InferInput("images", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException):
        triton_grpc.infer(model_name, [bad])
    after = _stats(triton_grpc, model_name)
    assert after.name == model_name and after.version == "1"
    assert after.inference_count - before.inference_count == 2 * len(pixels)
    assert after.execution_count - before.execution_count >= 2
    s0, s1 = before.inference_stats, after.inference_stats
    assert s1.success.count - s0.success.count == 2
    assert s1.success.ns > s0.success.ns
    assert s1.fail.count - s0.fail.count == 1
    assert s1.compute_infer.ns > s0.compute_infer.ns
    assert after.last_inference >= before.last_inference > 0


def test_request_metrics_carry_the_protocol(server, triton_grpc, model_name, pixels):
    triton_grpc.infer(model_name, [_pixels_input(grpcclient, pixels, "UINT8")])
    with pytest.raises(InferenceServerException):
        triton_grpc.infer("no-such-model", [_pixels_input(grpcclient, pixels, "UINT8")])
    text = httpx.get(server.url + "/metrics").text
    assert 'serve_request_success_total{protocol="grpc",route="ModelInfer"}' in text
    assert (
        'serve_request_failure_total{protocol="grpc",reason="model_not_found",route="ModelInfer"}'
        in text
    )
    assert 'protocol="grpc",route="ModelInfer",status="OK"' in text


# -- what the service does not offer ---------------------------------------------------------


def test_unimplemented_methods_say_so(grpc_stub, model_name):
    with pytest.raises(grpc.RpcError) as exc:
        grpc_stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=model_name))
    assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "fixed at start" in exc.value.details()


# -- grpc.health.v1 and reflection -------------------------------------------------------------


def test_health_service_follows_readiness(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        for service in ("", "inference.GRPCInferenceService", "liveness"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == serving
        with pytest.raises(grpc.RpcError) as exc:
            health.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
        stream = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(stream).status == serving
        stream.cancel()


def test_reflection_describes_the_services(server):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(server.grpc) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
        pool = DescriptorPool(database)
        service = pool.FindServiceByName("inference.GRPCInferenceService")
        assert "ModelInfer" in service.methods_by_name
        request = pool.FindMessageTypeByName("inference.ModelInferRequest")
        assert "raw_input_contents" in request.fields_by_name
