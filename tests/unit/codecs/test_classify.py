"""The native ``/v1/classify`` codec: raw, multipart and JSON bodies in, the answer out."""

import asyncio
import base64
import json
from dataclasses import replace

import pytest

from service.codecs.classify import ClassifyJSON, answer, decode
from service.errors import InvalidInput, UnsupportedMediaType

BOUNDARY = "XyZzY"


class JobJSON(ClassifyJSON):
    """A body model that adds a field, as the jobs route's does."""

    callback_url: str | None = None


def run(body: bytes, content_type: str, settings, query_top_k=None, **kwargs):
    return asyncio.run(decode(body, content_type, query_top_k, settings, **kwargs))


def multipart(files: list[bytes], **fields: str) -> tuple[bytes, str]:
    parts = []
    for i, data in enumerate(files):
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f{i}"; '
            f'filename="{i}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    for key, value in fields.items():
        head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
        parts.append(head.encode() + value.encode() + b"\r\n")
    body = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
    return body, f"multipart/form-data; boundary={BOUNDARY}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_raw_body_is_one_image_with_the_query_top_k(settings):
    for content_type in ("image/jpeg", "application/octet-stream", ""):
        batch = run(b"jpeg bytes", content_type, settings, "2")
        assert (batch.images, batch.top_k, batch.options) == ([b"jpeg bytes"], 2, {})


def test_a_raw_body_without_top_k_gets_the_default(settings):
    assert run(b"x", "image/png", settings).top_k == settings.default_top_k


def test_multipart_files_keep_their_order_and_fields_become_options(settings):
    body, content_type = multipart([b"one", b"two"], top_k="4", pipeline="p")
    batch = run(body, content_type, settings, "1")
    assert batch.images == [b"one", b"two"]
    assert batch.top_k == 4  # the form's field wins over the query
    assert batch.options == {"pipeline": "p"}


def test_malformed_multipart_is_refused(settings):
    with pytest.raises(InvalidInput) as exc:
        run(b"garbage", "multipart/form-data", settings)
    assert exc.value.code == "invalid_multipart" and "malformed multipart body" in exc.value.message


def test_json_images_are_base64_with_top_k_and_pipeline(settings):
    body = {"images": [{"b64": b64(b"a")}, {"b64": b64(b"b")}], "top_k": 2, "pipeline": "p"}
    batch = run(json.dumps(body).encode(), "application/json; charset=utf-8", settings, "9")
    assert (batch.images, batch.top_k, batch.options) == ([b"a", b"b"], 2, {"pipeline": "p"})


def test_a_jobs_json_body_model_carries_the_callback_url(settings):
    body = {"images": [{"b64": b64(b"a")}], "callback_url": "http://127.0.0.1/x"}
    batch = run(json.dumps(body).encode(), "application/json", settings, body_model=JobJSON)
    assert batch.options == {"callback_url": "http://127.0.0.1/x"}
    assert batch.top_k == settings.default_top_k


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"images": []}, "images: List should have at least 1 item"),
        ({"images": [{"b64": "eA=="}], "top_k": 0}, "top_k: Input should be greater than"),
        ({"images": [{"b64": "eA=="}], "size": 3}, "size: Extra inputs are not permitted"),
        ({"images": [{"png": "eA=="}]}, "images.0.b64: Field required"),
        ({"images": [{"b64": "eA=="}], "callback_url": "x"}, "callback_url: Extra inputs"),
    ],
)
def test_json_that_breaks_the_schema_says_which_field(settings, body, message):
    with pytest.raises(InvalidInput, match=message) as exc:
        run(json.dumps(body).encode(), "application/json", settings, body_model=ClassifyJSON)
    assert exc.value.status == 400 and exc.value.code == "invalid_request"


def test_json_with_bad_base64_names_the_image(settings):
    body = {"images": [{"b64": b64(b"ok")}, {"b64": "%%%"}]}
    with pytest.raises(InvalidInput, match=r"images\[1\].b64 is not valid base64"):
        run(json.dumps(body).encode(), "application/json", settings)


def test_a_body_that_is_not_json_is_invalid_json(settings):
    with pytest.raises(InvalidInput) as exc:
        run(b"{oops", "application/json", settings)
    assert exc.value.code == "invalid_json"


def test_an_unsupported_content_type_is_415(settings):
    with pytest.raises(UnsupportedMediaType, match="'text/plain' is not supported") as exc:
        run(b"hello", "text/plain", settings)
    assert exc.value.status == 415


@pytest.mark.parametrize(
    ("images", "code", "message"),
    [
        ([], "no_images", "the request contains no image"),
        ([b"x"] * 5, "too_many_images", "5 images in one request; the limit is 4"),
        ([b"x", b""], "empty", "image 1: the image is empty"),
    ],
)
def test_image_count_and_empty_images_are_refused(settings, images, code, message):
    body, content_type = multipart(images)
    with pytest.raises(InvalidInput, match=message) as exc:
        run(body, content_type, settings)
    assert exc.value.code == code


def test_an_empty_raw_body_is_an_empty_image(settings):
    with pytest.raises(InvalidInput) as exc:
        run(b"", "image/jpeg", settings)
    assert exc.value.code == "empty"


def test_a_bad_query_top_k_is_refused(settings):
    with pytest.raises(InvalidInput) as exc:
        run(b"x", "image/jpeg", settings, "0")
    assert exc.value.code == "invalid_top_k"


def test_the_answer_lists_predictions_per_image_with_timing(result):
    out = answer(result)
    assert out["model"] == "resnet50" and out["pipeline"] == "default"
    assert out["predictions"][0] == [
        {"label": "dog", "class_id": 1, "score": pytest.approx(0.7)},
        {"label": "fox", "class_id": 2, "score": pytest.approx(0.2)},
    ]
    assert out["predictions"][1][0]["label"] == "cat"
    assert out["timing"] == {
        "preprocess_ms": 1.0,
        "queue_ms": 2.0,
        "inference_ms": 3.0,
        "total_ms": 7.5,
        "batch_sizes": [2, 2],
    }
    assert out["warnings"] == []
    json.dumps(out)  # the body is plain JSON


def test_the_answer_warns_when_the_weights_are_random(result):
    result.pipeline = replace(result.pipeline, random_weights=True)
    assert answer(result)["warnings"][0].startswith("RANDOM WEIGHTS")
