"""The KServe V2 codec: JSON and binary bodies in (``v2_inputs``), tensors and metadata out."""

import base64
import json
import struct
import time

import numpy as np
import pytest

from service.codecs.v2 import (
    HEADER_LENGTH,
    Model,
    OutputSpec,
    encode_response,
    find_model,
    model_config,
    model_metadata,
)
from service.codecs.v2_inputs import decode_request, split_body
from service.errors import InvalidInput, NotFound


@pytest.fixture
def model(info) -> Model:
    return Model("resnet50", info)


def decode(header, model, settings, binary=b"", timeout_s=30.0):
    return decode_request(header, binary, model, settings, timeout_s)


def images_input(data, shape=None, **extra) -> dict:
    shape = shape if shape is not None else [len(data)]
    return {"name": "images", "datatype": "BYTES", "shape": shape, "data": data, **extra}


def pixels_input(values, shape=(1, 32, 32, 3), datatype="FP32") -> dict:
    return {"name": "pixels", "datatype": datatype, "shape": list(shape), "data": values}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bytes_tensor(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


# -- requests ---------------------------------------------------------------------------


def test_json_images_are_base64_elements(model, settings):
    request, out = decode({"inputs": [images_input([b64(b"a"), b64(b"b")])]}, model, settings)
    assert request.images == [b"a", b"b"] and request.pixels is None
    assert request.pipeline == "default" and request.timeout_s == 30.0
    assert out == OutputSpec(binary=False, classification=0)


def test_nested_json_images_of_shape_n_1_are_flattened(model, settings):
    header = {"inputs": [images_input([[b64(b"a")], [b64(b"b")]], shape=[2, 1])]}
    assert decode(header, model, settings)[0].images == [b"a", b"b"]


def test_binary_images_are_length_prefixed_elements(model, settings):
    raw = bytes_tensor(b"jpeg1", b"jpeg22")
    spec = {"name": "images", "datatype": "BYTES", "shape": [2]}
    spec["parameters"] = {"binary_data_size": len(raw)}
    request, _ = decode({"inputs": [spec]}, model, settings, raw)
    assert request.images == [b"jpeg1", b"jpeg22"]


def test_json_pixels_become_a_uint8_batch(model, settings):
    values = np.arange(32 * 32 * 3) % 256
    request, _ = decode({"inputs": [pixels_input(values.tolist())]}, model, settings)
    assert request.pixels.dtype == np.uint8 and request.pixels.shape == (1, 32, 32, 3)
    assert request.pixels.ravel().tolist() == values.tolist() and request.images == []


def test_binary_uint8_pixels_are_taken_as_they_are(model, settings):
    raw = bytes(range(256)) * 12
    spec = {"name": "pixels", "datatype": "UINT8", "shape": [1, 32, 32, 3]}
    spec["parameters"] = {"binary_data_size": len(raw)}
    request, _ = decode({"inputs": [spec]}, model, settings, raw)
    assert request.pixels.tobytes() == raw


def test_binary_fp32_pixels_are_rounded(model, settings):
    raw = np.full(32 * 32 * 3, 9.6, "<f4").tobytes()
    spec = {"name": "pixels", "datatype": "FP32", "shape": [1, 32, 32, 3]}
    spec["parameters"] = {"binary_data_size": len(raw)}
    assert decode({"inputs": [spec]}, model, settings, raw)[0].pixels.max() == 10


def test_tritons_timeout_parameter_shortens_the_deadline_but_never_lengthens_it(model, settings):
    header = {"inputs": [images_input([b64(b"a")])], "parameters": {"timeout": 250_000}}
    assert decode(header, model, settings)[0].timeout_s == 0.25
    header["parameters"]["timeout"] = 90_000_000
    assert decode(header, model, settings)[0].timeout_s == 30.0
    header["parameters"]["timeout"] = 2**64 - 1  # the most a gRPC client can send
    assert decode(header, model, settings)[0].timeout_s == 30.0
    header["parameters"]["timeout"] = 0  # Triton's "no timeout": the transport's deadline
    assert decode(header, model, settings)[0].timeout_s == 30.0


def test_requested_outputs_choose_binary_and_classification(model, settings):
    header = {
        "inputs": [images_input([b64(b"a")])],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}],
        "parameters": {"binary_data_output": True},
    }
    assert decode(header, model, settings)[1] == OutputSpec(binary=True, classification=2)


PIXELS_1 = [0] * (32 * 32 * 3)


@pytest.mark.parametrize(
    ("header", "message", "code"),
    [
        ({}, "the request has no 'inputs'", "invalid_input"),
        ({"inputs": "x"}, "the request has no 'inputs'", "invalid_input"),
        (
            {"inputs": [images_input([b64(b"a")]), pixels_input(PIXELS_1)]},
            "expected exactly one input ('images' or 'pixels'), got 2",
            "invalid_input",
        ),
        ({"inputs": [3]}, "each input must be a JSON object", "invalid_input"),
        ({"inputs": [{"datatype": "BYTES"}]}, "input is missing its 'name'", "invalid_input"),
        (
            {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1], "data": [1]}]},
            "unexpected inference input 'INPUT__0'; the model's inputs are 'images' (BYTES) "
            "and 'pixels' (FP32/UINT8)",
            "invalid_input",
        ),
        ({"inputs": [{"name": "pixels", "shape": [1]}]}, "missing its 'datatype'", "invalid_input"),
        (
            {"inputs": [images_input([b64(b"a")], shape=[1, -1])]},
            "input 'images': 'shape' must be a non-empty list of non-negative integers",
            "invalid_input",
        ),
        (
            {"inputs": [images_input([b64(b"a")], shape=[True])]},
            "'shape' must be a non-empty list",
            "invalid_input",
        ),
        (
            {"inputs": [pixels_input(PIXELS_1, shape=(1, 32, 32, 3, 1))]},
            "input 'pixels': 'shape' must be a non-empty list of non-negative integers, "
            "at most 4 of them",
            "invalid_input",
        ),
        ({"inputs": [images_input([], shape=[0])]}, "input 'images': the batch is empty", None),
        (
            {"inputs": [images_input([b64(b"a")] * 5)]},
            "input 'images': 5 images in one request; the limit is 4",
            "too_many_images",
        ),
        (
            {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1]}]},
            "input 'images' has neither 'data' nor binary data",
            None,
        ),
        (
            {"inputs": [{**images_input([b64(b"a")]), "datatype": "UINT8"}]},
            "input 'images': datatype 'UINT8', expected 'BYTES'",
            None,
        ),
        (
            {"inputs": [images_input([b64(b"a")], shape=[1, 2])]},
            "input 'images': shape [1, 2], expected [N] or [N, 1]",
            None,
        ),
        (
            {"inputs": [images_input([b64(b"a")] * 3, shape=[2])]},
            "shape [2] needs 2 elements, got 3",
            None,
        ),
        ({"inputs": [images_input([b64(b"")])]}, "input 'images': element 0 is empty", "empty"),
        ({"inputs": [images_input([7])]}, "element 0 must be a base64 string", None),
        ({"inputs": [images_input(["@@"])]}, "element 0 is not valid base64", "invalid_base64"),
        (
            {"inputs": [pixels_input(PIXELS_1, datatype="INT32")]},
            "datatype 'INT32', expected 'FP32' or 'UINT8'",
            None,
        ),
        (
            {"inputs": [pixels_input([0] * 768, shape=(1, 16, 16, 3))]},
            "shape [1, 16, 16, 3], expected [N, 32, 32, 3]",
            None,
        ),
        ({"inputs": [pixels_input(["a"] * 3072)]}, "'data' must be numbers", None),
        ({"inputs": [pixels_input([0] * 3071)]}, "needs 3072 values, got 3071", None),
        ({"inputs": [pixels_input([10**400] + [0] * 3071)]}, "'data' must be numbers", None),
        ({"inputs": [pixels_input([300.0] * 3072)]}, "pixel values must be RGB in 0..255", None),
        ({"inputs": [pixels_input([0.5] * 3072, datatype="UINT8")]}, "whole numbers", None),
        (
            {"inputs": [images_input([b64(b"a")])], "parameters": {"timeout": -1}},
            "the 'timeout' parameter must be a number of microseconds from 0 (none)",
            None,
        ),
        (
            {"inputs": [images_input([b64(b"a")])], "parameters": {"timeout": 10**400}},
            "number of microseconds from 0 (none) to 2**64 - 1",
            None,
        ),
        (
            {"inputs": [images_input([b64(b"a")])], "parameters": "x"},
            "request: 'parameters' must be an object",
            None,
        ),
        (
            {"inputs": [images_input([b64(b"a")])], "parameters": {"binary_data_output": 1}},
            "binary_data_output must be true or false",
            None,
        ),
        (
            {"inputs": [images_input([b64(b"a")])], "outputs": [{"name": "probabilities"}] * 2},
            "'outputs' must be a list with the model's one output, 'probabilities'",
            None,
        ),
        (
            {"inputs": [images_input([b64(b"a")])], "outputs": [{"name": "logits"}]},
            "unexpected inference output 'logits'; the model's output is 'probabilities'",
            None,
        ),
        (
            {
                "inputs": [images_input([b64(b"a")])],
                "outputs": [{"name": "probabilities", "parameters": {"classification": -1}}],
            },
            "classification must be a non-negative integer",
            None,
        ),
        (
            {
                "inputs": [images_input([b64(b"a")])],
                "outputs": [{"name": "probabilities", "parameters": {"binary_data": "yes"}}],
            },
            "output 'probabilities': binary_data must be true or false",
            None,
        ),
    ],
)
def test_bad_requests_are_400_with_what_is_wrong(model, settings, header, message, code):
    with pytest.raises(InvalidInput) as exc:
        decode(header, model, settings)
    assert exc.value.status == 400
    assert message in exc.value.message
    assert exc.value.code == (code or "invalid_input")


def test_an_id_utf8_cannot_carry_is_refused_before_the_model_runs(model, settings):
    header = {"id": "\ud800", "inputs": [images_input([b64(b"a")])]}
    with pytest.raises(InvalidInput, match="'id' '\\\\ud800' is not valid Unicode"):
        decode(header, model, settings)
    header["id"] = "r\u00e9q-1"  # any other text is taken
    assert decode(header, model, settings)[0].images == [b"a"]


def test_a_long_shape_is_refused_before_any_arithmetic_on_it(model, settings):
    # Their product alone took seconds of the event loop (a big-integer multiply per entry).
    shape = [2**62] * 40_000
    start = time.perf_counter()
    with pytest.raises(InvalidInput, match="at most 4 of them"):
        decode({"inputs": [pixels_input([], shape=shape)]}, model, settings)
    assert time.perf_counter() - start < 0.5


def test_the_pixels_view_names_its_one_input_when_refusing_another(info, settings):
    view = Model("resnet50-pixels", info, pixels_only=True)
    with pytest.raises(InvalidInput, match="takes one input, 'pixels'") as exc:
        decode({"inputs": [images_input([b64(b"a")])]}, view, settings)
    assert "encoded images go to 'resnet50'" in exc.value.message


@pytest.mark.parametrize(
    ("spec_parameters", "binary", "message"),
    [
        (None, b"abc", "3 bytes of binary data follow the header but no input declares"),
        ({"binary_data_size": -1}, b"", "binary_data_size must be a non-negative integer"),
        ({"binary_data_size": 11}, bytes_tensor(b"abc"), "binary_data_size is 11 but 7 bytes"),
        ({"binary_data_size": 7}, struct.pack("<I", 99) + b"abc", "runs past the data"),
        ({"binary_data_size": 2}, b"ab", "truncated BYTES element length at byte 0"),
    ],
)
def test_bad_binary_data_is_refused(model, settings, spec_parameters, binary, message):
    spec = {"name": "images", "datatype": "BYTES", "shape": [1]}
    if spec_parameters is not None:
        spec["parameters"] = spec_parameters
    with pytest.raises(InvalidInput, match=message):
        decode({"inputs": [spec]}, model, settings, binary)


def test_data_and_binary_data_together_are_refused(model, settings):
    spec = images_input([b64(b"a")], parameters={"binary_data_size": 7})
    with pytest.raises(InvalidInput, match="has both 'data' and binary data"):
        decode({"inputs": [spec]}, model, settings, bytes_tensor(b"abc"))


def test_binary_pixels_of_the_wrong_size_are_refused(model, settings):
    spec = {"name": "pixels", "datatype": "FP32", "shape": [1, 32, 32, 3]}
    spec["parameters"] = {"binary_data_size": 10}
    with pytest.raises(InvalidInput, match="of FP32 needs 12288 bytes, got 10"):
        decode({"inputs": [spec]}, model, settings, b"\0" * 10)


# -- the body's two parts ---------------------------------------------------------------


def test_the_header_length_splits_json_from_binary_data():
    header = json.dumps({"inputs": []}).encode()
    parsed, binary = split_body(header + b"\x01\x02", str(len(header)))
    assert parsed == {"inputs": []} and binary == b"\x01\x02"
    assert split_body(header, None) == ({"inputs": []}, b"")


@pytest.mark.parametrize(
    ("body", "length", "message"),
    [
        (b"{}", "abc", f"{HEADER_LENGTH} 'abc' is not an integer"),
        (b"{}", "-1", f"{HEADER_LENGTH} -1 is outside the body, which has 2 bytes"),
        (b"{}", "3", "is outside the body"),
        (b"{}xyz", "3", "the inference request header is not valid JSON"),
        (b"[1]", None, "the inference request must be a JSON object"),
    ],
)
def test_a_bad_header_length_or_header_is_refused(body, length, message):
    with pytest.raises(InvalidInput, match=message) as exc:
        split_body(body, length)
    assert exc.value.code == "invalid_input"


# -- answers ----------------------------------------------------------------------------


PROBS = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32)
LABELS = ("cat", "dog", "fox")


def test_a_json_answer_carries_the_probabilities_row_major():
    body, headers, media = encode_response("m", "req-1", PROBS, OutputSpec(False, 0), LABELS)
    assert headers == {} and media == "application/json"
    out = json.loads(body)
    assert out["model_name"] == "m" and out["model_version"] == "1" and out["id"] == "req-1"
    (tensor,) = out["outputs"]
    assert tensor["name"] == "probabilities" and tensor["datatype"] == "FP32"
    assert tensor["shape"] == [2, 3] and tensor["data"] == pytest.approx(PROBS.ravel().tolist())


def test_a_binary_answer_puts_the_tensor_after_the_json_header():
    body, headers, media = encode_response("m", None, PROBS, OutputSpec(True, 0), LABELS)
    length = int(headers[HEADER_LENGTH])
    header = json.loads(body[:length])
    assert media == "application/octet-stream" and "id" not in header
    assert header["outputs"][0]["parameters"] == {"binary_data_size": PROBS.nbytes}
    assert np.array_equal(np.frombuffer(body[length:], "<f4").reshape(2, 3), PROBS)


def test_classification_answers_are_score_index_label_strings_best_first():
    body, _, _ = encode_response("m", "", PROBS, OutputSpec(False, 2), LABELS)
    (tensor,) = json.loads(body)["outputs"]
    assert tensor["datatype"] == "BYTES" and tensor["shape"] == [2, 2]
    assert tensor["data"] == [
        "0.700000:1:dog",
        "0.200000:2:fox",
        "0.500000:0:cat",
        "0.300000:2:fox",
    ]


def test_binary_classification_strings_are_length_prefixed():
    body, headers, _ = encode_response("m", "", PROBS, OutputSpec(True, 9), ())
    length = int(headers[HEADER_LENGTH])
    assert json.loads(body[:length])["outputs"][0]["shape"] == [2, 3]  # k capped at classes
    assert body[length:].startswith(struct.pack("<I", 10) + b"0.700000:1")


# -- metadata and model lookup ----------------------------------------------------------


def test_metadata_lists_both_inputs_and_the_view_only_pixels(info):
    meta = model_metadata(Model("resnet50", info))
    assert [i["name"] for i in meta["inputs"]] == ["images", "pixels"]
    assert meta["inputs"][1]["shape"] == [-1, 32, 32, 3]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
    view = model_metadata(Model("resnet50-pixels", info, pixels_only=True))
    assert [i["name"] for i in view["inputs"]] == ["pixels"]


def test_the_model_config_has_the_batching_limits(info, settings):
    config = model_config(Model("resnet50-pixels", info, pixels_only=True), settings)
    assert config["max_batch_size"] == 4
    (tensor,) = config["input"]
    assert (tensor["name"], tensor["dims"], tensor["optional"]) == ("pixels", [32, 32, 3], False)
    assert config["dynamic_batching"]["preferred_batch_size"] == list(settings.batch_buckets)


class Models:
    """What ``find_model`` asks of the dataplane: a name's pipeline, and every served name."""

    def __init__(self, info):
        self.info = info

    def resolve(self, name):
        if name != self.info.model_name:
            raise NotFound(f"unknown pipeline {name!r}")
        return self.info

    def served_models(self):
        return ["resnet50"]


def test_a_pixels_view_is_found_by_its_models_name(info):
    plane = Models(info)
    assert find_model(plane, "resnet50", None) == Model("resnet50", info)
    assert find_model(plane, "resnet50-pixels", "1") == Model("resnet50-pixels", info, True)


@pytest.mark.parametrize("name", ["nothing", "nothing-pixels", "-pixels"])
def test_an_unknown_model_is_404_in_v2_words(info, name):
    with pytest.raises(NotFound, match=f"unknown model '{name}'; this server serves") as exc:
        find_model(Models(info), name, None)
    assert exc.value.status == 404
