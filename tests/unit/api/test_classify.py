"""POST /v1/classify: the three body forms, request order, and every kind of bad input."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.support.helpers import encode, photo_like


def test_raw_jpeg_body(client, jpeg_bytes):
    r = client.post("/v1/classify", content=jpeg_bytes, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "resnet50"
    (preds,) = body["predictions"]
    assert len(preds) == 5
    scores = [p["score"] for p in preds]
    assert scores == sorted(scores, reverse=True)
    assert all(0 <= s <= 1 for s in scores)
    assert {p["label"] for p in preds} == {f"class_{p['class_id']}" for p in preds}
    assert set(body["timing"]) >= {"preprocess_ms", "queue_ms", "inference_ms", "total_ms"}
    assert body["warnings"] and "RANDOM" in body["warnings"][0]


def test_top_k_from_query_and_json(client, png_bytes):
    r = client.post(
        "/v1/classify?top_k=3", content=png_bytes, headers={"content-type": "image/png"}
    )
    assert len(r.json()["predictions"][0]) == 3
    payload = {"images": [{"b64": base64.b64encode(png_bytes).decode()}], "top_k": 10}
    r = client.post("/v1/classify", json=payload)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"][0]
    assert len(preds) == 10
    assert abs(sum(p["score"] for p in preds) - 1.0) < 1e-4  # all 10 classes: a distribution


def _single(client, data: bytes) -> list[dict]:
    r = client.post("/v1/classify?top_k=10", content=data, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]


def test_multipart_answers_in_request_order(client):
    images = [encode(photo_like(60 + 10 * i, 80, seed=i), "PNG") for i in range(3)]
    files = [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    r = client.post("/v1/classify", files=files, data={"top_k": "10"})
    assert r.status_code == 200, r.text
    together = r.json()["predictions"]
    assert len(together) == 3
    for i, data in enumerate(images):
        alone = _single(client, data)
        assert [p["class_id"] for p in together[i]] == [p["class_id"] for p in alone]
        np.testing.assert_allclose(
            [p["score"] for p in together[i]], [p["score"] for p in alone], atol=1e-5
        )


def test_json_base64_several_images(client, jpeg_bytes, png_bytes):
    payload = {"images": [{"b64": base64.b64encode(d).decode()} for d in (jpeg_bytes, png_bytes)]}
    r = client.post("/v1/classify", json=payload)
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 2


def test_data_url_base64_is_accepted(client, png_bytes):
    url = "data:image/png;base64," + base64.b64encode(png_bytes).decode()
    r = client.post("/v1/classify", json={"images": [{"b64": url}]})
    assert r.status_code == 200, r.text


def _error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body


def test_not_an_image_gets_400(client):
    r = client.post("/v1/classify", content=b"hello world", headers={"content-type": "image/jpeg"})
    _error(r, 400, "not_an_image")


@pytest.mark.parametrize("fmt", ["ICO", "DDS", "TGA"])
def test_an_image_in_a_format_the_service_does_not_take_gets_400(client, fmt):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, fmt)
    r = client.post("/v1/classify", content=buf.getvalue(), headers={"content-type": "image/x"})
    body = _error(r, 400, "not_an_image")
    assert "(JPEG, PNG, WebP, GIF, BMP or TIFF)" in body["error"]["message"]


def test_truncated_jpeg_gets_400(client, jpeg_bytes):
    r = client.post(
        "/v1/classify", content=jpeg_bytes[:2000], headers={"content-type": "image/jpeg"}
    )
    _error(r, 400, "corrupt_image")


def test_zero_bytes_get_400(client):
    r = client.post("/v1/classify", content=b"", headers={"content-type": "image/jpeg"})
    _error(r, 400, "empty")


def test_image_over_the_pixel_limit_gets_400(make_client, jpeg_bytes):
    client = make_client(max_image_pixels=640 * 480 - 1)
    r = client.post("/v1/classify", content=jpeg_bytes, headers={"content-type": "image/jpeg"})
    body = _error(r, 400, "too_many_pixels")
    assert "307200" in body["error"]["message"]


def test_body_over_the_size_limit_gets_413(make_client, jpeg_bytes):
    client = make_client(max_body_bytes=1000)
    r = client.post("/v1/classify", content=jpeg_bytes, headers={"content-type": "image/jpeg"})
    _error(r, 413, "payload_too_large")


def test_chunked_body_over_the_limit_gets_413(make_client, jpeg_bytes):
    client = make_client(max_body_bytes=1000)

    def chunks():
        for i in range(0, len(jpeg_bytes), 500):
            yield jpeg_bytes[i : i + 500]

    r = client.post("/v1/classify", content=chunks(), headers={"content-type": "image/jpeg"})
    _error(r, 413, "payload_too_large")


def test_malformed_json_gets_400(client):
    r = client.post(
        "/v1/classify", content=b'{"images": [', headers={"content-type": "application/json"}
    )
    _error(r, 400, "invalid_json")


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"images": []},
        {"images": [{"url": "x"}]},
        {"images": "x"},
        {"images": [{"b64": "x"}], "top_k": 0},
    ],
)
def test_json_with_the_wrong_shape_gets_400(client, payload):
    r = client.post(
        "/v1/classify", content=json.dumps(payload), headers={"content-type": "application/json"}
    )
    _error(r, 400, "invalid_request")


def test_bad_base64_gets_400(client):
    r = client.post("/v1/classify", json={"images": [{"b64": "not base64!!"}]})
    _error(r, 400, "invalid_base64")


def test_too_many_images_gets_400(make_client, png_bytes):
    client = make_client(max_images_per_request=2)
    payload = {"images": [{"b64": base64.b64encode(png_bytes).decode()}] * 3}
    _error(client.post("/v1/classify", json=payload), 400, "too_many_images")


def test_one_bad_image_among_several_names_its_index(client, png_bytes):
    payload = {
        "images": [
            {"b64": base64.b64encode(png_bytes).decode()},
            {"b64": base64.b64encode(b"garbage").decode()},
        ]
    }
    body = _error(client.post("/v1/classify", json=payload), 400, "not_an_image")
    assert body["error"]["message"].startswith("image 1:")


def test_bad_top_k_gets_400(client, png_bytes):
    for value in ("0", "abc", "1001"):
        r = client.post(
            f"/v1/classify?top_k={value}", content=png_bytes, headers={"content-type": "image/png"}
        )
        _error(r, 400, "invalid_top_k")


def test_unsupported_content_type_gets_415(client):
    r = client.post("/v1/classify", content=b"a,b", headers={"content-type": "text/csv"})
    _error(r, 415, "unsupported_media_type")


def test_multipart_without_files_gets_400(client):
    r = client.post("/v1/classify", data={"top_k": "3"}, files={"x": ("", b"", "")})
    assert r.status_code == 400


def test_unknown_route_gets_json_404(client):
    _error(client.get("/v1/nothing"), 404, "not_found")


def test_wrong_method_gets_json_405(client):
    _error(client.get("/v1/classify"), 405, "method_not_allowed")


def test_bad_input_never_kills_the_service(client, jpeg_bytes):
    for bad in (b"", b"x" * 100, jpeg_bytes[:500], b"\x89PNG\r\n\x1a\n" + b"\x00" * 50):
        client.post("/v1/classify", content=bad, headers={"content-type": "image/png"})
    r = client.post("/v1/classify", content=jpeg_bytes, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200
