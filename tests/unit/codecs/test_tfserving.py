"""The TensorFlow Serving REST codec: ``:predict`` bodies in, predictions and metadata out."""

import base64
import json
from dataclasses import replace

import numpy as np
import pytest

from service.codecs.tfserving import decode_predict, encode_predict, model_metadata, model_status
from service.errors import InvalidInput


def predict(payload, info, settings, timeout_s=30.0):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return decode_predict(body, info, settings, timeout_s)


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


PIXELS = np.arange(32 * 32 * 3).reshape(32, 32, 3) % 256


def test_row_form_images_are_b64_objects(info, settings):
    request, row = predict({"instances": [b64(b"a"), b64(b"b")]}, info, settings, 2.0)
    assert row and request.images == [b"a", b"b"] and request.pixels is None
    assert request.pipeline == "default" and request.timeout_s == 2.0


def test_row_form_instances_may_name_their_input(info, settings):
    request, _ = predict({"instances": [{"image_bytes": b64(b"a")}]}, info, settings)
    assert request.images == [b"a"]
    request, _ = predict({"instances": [{"images": PIXELS.tolist()}]}, info, settings)
    assert request.pixels.shape == (1, 32, 32, 3)


def test_columnar_form_takes_a_list_or_one_named_input(info, settings):
    request, row = predict({"inputs": [b64(b"a")]}, info, settings)
    assert not row and request.images == [b"a"]
    payload = {"inputs": {"images": [PIXELS.tolist()]}, "signature_name": "serving_pixels"}
    request, row = predict(payload, info, settings)
    assert not row and request.pixels.dtype == np.uint8
    assert np.array_equal(request.pixels[0], PIXELS)


def test_pixels_are_rounded(info, settings):
    request, _ = predict({"instances": [(PIXELS - 0.4).clip(0).tolist()]}, info, settings)
    assert np.array_equal(request.pixels[0], PIXELS)


@pytest.mark.parametrize(
    ("payload", "message", "code"),
    [
        (b"{nope", "JSON Parse error: Expecting property name", "invalid_argument"),
        ([1], "the request body must be a JSON object", "invalid_argument"),
        (
            {"instances": [], "signature_name": "predict"},
            'Serving signature name: "predict" not found in signature def',
            "invalid_argument",
        ),
        ({"instances": [], "signature_name": []}, "'signature_name' must be a string", None),
        ({"instances": [], "signature_name": {}}, "must be a string, got dict", None),
        ({"instances": [], "inputs": []}, "Not both 'instances' and 'inputs'", None),
        ({"signature_name": "serving_default"}, "Missing 'inputs' or 'instances' key", None),
        ({"instances": {"b64": "eA=="}}, "Expecting 'instances' to be an list/array", None),
        ({"inputs": "x"}, "Expecting 'inputs' to be a list/array or an object of lists", None),
        ({"instances": []}, "the batch is empty: no instances", None),
        (
            {"inputs": {"image_bytes": [], "images": []}},
            "'inputs' names ['image_bytes', 'images']; the model has one input",
            None,
        ),
        (
            {"instances": [{"pixels": [1]}]},
            "instances[0] has inputs ['pixels']; the model has one input",
            None,
        ),
        (
            {"instances": [b64(b"x")] * 5},
            "5 images in one request; the limit is 4",
            "too_many_images",
        ),
        ({"instances": [{"b64": "eA==", "x": 1}]}, 'instance 0: expected {"b64"', None),
        ({"instances": [{"b64": 3}]}, 'instance 0: expected {"b64"', None),
        ({"instances": [{"b64": "@@"}]}, "instance 0: 'b64' is not valid base64", "invalid_base64"),
        ({"instances": [{"b64": ""}]}, "instance 0: the image is empty", "empty"),
        ({"instances": ["text"]}, "or a [H, W, 3] array of pixels, got str", None),
        (
            {"instances": [b64(b"x"), PIXELS.tolist()]},
            "either encoded images or pixel arrays, not both",
            None,
        ),
        ({"instances": [[[1, 2, 3]], [[1, 2]]]}, "equally shaped nested lists of numbers", None),
        ({"instances": [[[[10**400]]]]}, "equally shaped nested lists of numbers", None),
        (
            {"instances": [np.zeros((16, 16, 3)).tolist()]},
            "pixel arrays have shape [16, 16, 3]; the model takes [32, 32, 3]",
            None,
        ),
        ({"instances": [np.full((32, 32, 3), 256).tolist()]}, "RGB in 0..255", None),
    ],
)
def test_bad_predict_bodies_are_400_in_tensorflow_servings_words(
    info, settings, payload, message, code
):
    with pytest.raises(InvalidInput) as exc:
        predict(payload, info, settings)
    assert exc.value.status == 400
    assert message in exc.value.message
    assert exc.value.code == (code or "invalid_argument")


def test_predictions_answer_in_the_form_they_were_asked():
    probs = np.array([[0.25, 0.75]], np.float32)
    assert encode_predict(probs, row=True) == {"predictions": [[0.25, 0.75]]}
    assert encode_predict(probs, row=False) == {"outputs": [[0.25, 0.75]]}


@pytest.mark.parametrize(
    ("state", "shown", "code"),
    [("loading", "LOADING", "OK"), ("ready", "AVAILABLE", "OK"), ("failed", "END", "UNKNOWN")],
)
def test_the_model_status_maps_the_pipeline_state(info, state, shown, code):
    status = model_status(replace(info, state=state, error="boom"))["model_version_status"][0]
    assert status["version"] == "1" and status["state"] == shown
    assert status["status"]["error_code"] == code
    assert status["status"]["error_message"] == ("boom" if state == "failed" else "")


def test_metadata_has_both_signatures_at_the_models_size(info):
    meta = model_metadata("resnet50", info)
    assert meta["model_spec"] == {"name": "resnet50", "signature_name": "", "version": "1"}
    signatures = meta["metadata"]["signature_def"]["signature_def"]
    assert sorted(signatures) == ["serving_default", "serving_pixels"]
    pixels = signatures["serving_pixels"]["inputs"]["images"]
    assert [d["size"] for d in pixels["tensor_shape"]["dim"]] == ["-1", "32", "32", "3"]
    output = signatures["serving_default"]["outputs"]["probabilities"]
    assert [d["size"] for d in output["tensor_shape"]["dim"]] == ["-1", "3"]
