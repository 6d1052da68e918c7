"""JSON that Python parses but the service must not trip over (numbers past any float or past
Python's digit limit, lone surrogate escapes): a 400 in each protocol's error shape, on every
route that takes JSON."""

from __future__ import annotations

import json
import time

import pytest

from service.api.errors import NATIVE, PLAIN, error_response
from tests.support.tiny import tiny_loaded

HUGE = "1" + "0" * 5000  # past Python's 4300-digit limit on int(str)
PAST_FLOAT = "1" + "0" * 400  # an integer no float holds
JSON = {"content-type": "application/json"}


def _v2_pixels(data: str) -> str:
    """A V2 pixels input whose first value is ``data``, as JSON."""
    return (
        '{"name": "pixels", "datatype": "FP32", "shape": [1, 32, 32, 3], "data": [' + data + ", 0]}"
    )


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(preprocess_workers=1, max_batch_size=4, batch_buckets=[1, 4])
    with TestClient(create_app(settings, model_factory=tiny_loaded)) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "service did not become ready"
            time.sleep(0.05)
        yield client


def _message(r, status: int = 400, plain: bool = False) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    if plain:  # the standard protocols' shape, {"error": "<message>"}
        assert isinstance(error, str) and error
        return error
    assert error["code"] and error["message"]
    return error["message"]


@pytest.mark.parametrize(
    ("path", "body", "plain"),
    [
        ("/v1/classify", '{"images": [], "top_k": ' + HUGE + "}", False),
        ("/v1/jobs", '{"images": [], "top_k": ' + HUGE + "}", False),
        (
            "/v2/models/resnet50/infer",
            '{"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 32, 32, 3], '
            '"data": [' + HUGE + "]}]}",
            True,
        ),
        ("/v1/models/resnet50:predict", '{"instances": [' + HUGE + "]}", True),
    ],
)
def test_an_integer_of_too_many_digits_is_400(client, path, body, plain):
    message = _message(client.post(path, content=body, headers=JSON), plain=plain)
    assert "more than 4300 digits" in message


@pytest.mark.parametrize("signature", ["[]", "{}", "7"])
def test_a_tf_serving_signature_name_that_is_not_a_string_is_400(client, signature):
    body = '{"signature_name": ' + signature + ', "instances": [{"b64": "eA=="}]}'
    r = client.post("/v1/models/resnet50:predict", content=body, headers=JSON)
    assert "'signature_name' must be a string" in _message(r, plain=True)


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (
            "/v2/models/resnet50/infer",
            '{"parameters": {"timeout": ' + PAST_FLOAT + '}, "inputs": [' + _v2_pixels("0") + "]}",
            "'timeout' parameter must be a number of microseconds from 0 (none)",
        ),
        (
            "/v2/models/resnet50/infer",
            '{"inputs": [' + _v2_pixels(PAST_FLOAT) + "]}",
            "'data' must be numbers",
        ),
        (
            "/v1/models/resnet50:predict",
            '{"instances": [[[[' + PAST_FLOAT + "]]]]}",
            "nested lists of numbers",
        ),
    ],
)
def test_an_integer_past_any_float_is_400(client, path, body, expected):
    assert expected in _message(client.post(path, content=body, headers=JSON), plain=True)


@pytest.mark.parametrize("binary_output", [False, True])
def test_a_v2_id_utf8_cannot_carry_is_400_before_inference(client, binary_output):
    # The answer quotes the id: it failed to encode only after the model ran.
    parameters = '"parameters": {"binary_data_output": true}, ' if binary_output else ""
    body = '{"id": "\\ud800", ' + parameters + '"inputs": [' + _v2_pixels("0") + "]}"
    r = client.post("/v2/models/resnet50/infer", content=body, headers=JSON)
    assert "'id' '\\ud800' is not valid Unicode" in _message(r, plain=True)


def test_an_error_quoting_a_lone_surrogate_is_rendered_escaped(client):
    body = '{"signature_name": "\\ud800", "instances": [{"b64": "eA=="}]}'
    r = client.post("/v1/models/resnet50:predict", content=body, headers=JSON)
    assert 'Serving signature name: "\\ud800" not found' in _message(r, plain=True)


@pytest.mark.parametrize("shape", [NATIVE, PLAIN])
def test_every_error_answer_renders_a_lone_surrogate_escaped(shape):
    r = error_response(400, "invalid_input", 'unknown "\ud800"', shape=shape)
    error = json.loads(r.body)["error"]
    assert (error if shape == PLAIN else error["message"]) == 'unknown "\\ud800"'
