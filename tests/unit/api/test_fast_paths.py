"""The fast paths (``api/fast.py``): raw-image classify and V2 ``infer`` are answered without
entering the framework, and every answer, good or bad, is the one the framework's route gives
for the same request."""

from __future__ import annotations

import gzip
import json
import re
import struct

import pytest

from service.api import fast
from service.api.fast import FastPaths
from tests.support.helpers import encode, photo_like


def _fast_layer(app) -> FastPaths:
    layer = app.layers
    while not isinstance(layer, FastPaths):
        layer = layer.app
    return layer


@pytest.fixture
def counted(make_client):
    """A client whose framework counts the requests that enter it."""
    client = make_client()
    layer = _fast_layer(client.app)
    framework, entered = layer.app, []

    async def counting(scope, receive, send):
        entered.append((scope["method"], scope["path"]))
        await framework(scope, receive, send)

    layer.app = counting
    return client, entered


def _binary_images(image: bytes, top: int = 3) -> tuple[bytes, dict[str, str]]:
    element = struct.pack("<I", len(image)) + image
    header = json.dumps(
        {
            "id": "r1",
            "inputs": [
                {
                    "name": "images",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(element)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"classification": top}}],
        }
    ).encode()
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
    return header + element, headers


def _requests(image: bytes) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(what, path, body, headers): good and bad V2 infer requests."""
    binary, binary_headers = _binary_images(image)
    header_len = int(binary_headers["inference-header-content-length"])
    pixels = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "UINT8",
                    "shape": [1, 32, 32, 3],
                    "data": [7] * (32 * 32 * 3),
                }
            ]
        }
    ).encode()
    json_headers = {"content-type": "application/json"}
    return [
        ("binary images", "/v2/models/{m}/infer", binary, binary_headers),
        ("binary, versioned", "/v2/models/{m}/versions/1/infer", binary, binary_headers),
        (
            "gzip",
            "/v2/models/{m}/infer",
            gzip.compress(binary),
            {**binary_headers, "content-encoding": "gzip"},
        ),
        ("JSON pixels", "/v2/models/{m}/infer", pixels, json_headers),
        ("unknown model", "/v2/models/nope/infer", pixels, json_headers),
        ("unknown version", "/v2/models/{m}/versions/99/infer", pixels, json_headers),
        (
            "header length past the body",
            "/v2/models/{m}/infer",
            binary,
            {**binary_headers, "inference-header-content-length": str(len(binary) + 5)},
        ),
        (
            "header length not a number",
            "/v2/models/{m}/infer",
            binary,
            {**binary_headers, "inference-header-content-length": "x"},
        ),
        (
            "header cut short",
            "/v2/models/{m}/infer",
            binary,
            {**binary_headers, "inference-header-content-length": str(header_len - 3)},
        ),
        ("not JSON", "/v2/models/{m}/infer", b"{nope", json_headers),
        (
            "unknown encoding",
            "/v2/models/{m}/infer",
            pixels,
            {**json_headers, "content-encoding": "br"},
        ),
        (
            "bad deadline",
            "/v2/models/{m}/infer",
            pixels,
            {**json_headers, "x-request-timeout-ms": "-1"},
        ),
        (
            "wrong input name",
            "/v2/models/{m}/infer",
            pixels.replace(b'"pixels"', b'"x"'),
            json_headers,
        ),
        ("not an image", "/v2/models/{m}/infer", *_binary_images(b"not an image")),
    ]


def _comparable(response) -> tuple:
    headers = {
        k: v for k, v in response.headers.items() if k not in ("x-request-id", "date", "server")
    }
    if response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
        if isinstance(body, dict) and "outputs" in body:
            for output in body["outputs"]:  # scores of the same image: equal within rounding
                data = output["data"]
                output["data"] = [round(x, 4) if isinstance(x, float) else x for x in data]
        headers.pop("content-length", None)  # the JSON may differ in float digits
        return response.status_code, headers, body
    return response.status_code, headers, response.content


def test_v2_infer_answers_are_the_routes_answers_without_entering_the_framework(
    counted, monkeypatch
):
    client, entered = counted
    model = client.get("/v1/models").json()["models"][0]["name"]
    image = encode(photo_like(40, 40, seed=3), "PNG")
    cases = [(what, path.format(m=model), body, h) for what, path, body, h in _requests(image)]
    entered.clear()

    fast_answers = [client.post(path, content=body, headers=h) for _, path, body, h in cases]
    assert entered == [], "a V2 infer request entered the framework"
    statuses = {what: r.status_code for (what, *_), r in zip(cases, fast_answers, strict=True)}
    assert statuses["binary images"] == statuses["gzip"] == statuses["JSON pixels"] == 200
    assert statuses["unknown model"] == statuses["unknown version"] == 404
    assert all(s == 400 for w, s in statuses.items() if w.startswith(("header", "not", "bad")))
    assert statuses["unknown encoding"] == 415

    monkeypatch.setattr(fast, "_V2_INFER", re.compile(r"(?!)"))  # the framework's route only
    route_answers = [client.post(path, content=body, headers=h) for _, path, body, h in cases]
    assert len(entered) == len(cases)
    for (what, *_), mine, theirs in zip(cases, fast_answers, route_answers, strict=True):
        assert _comparable(mine) == _comparable(theirs), what


def test_v2_infer_metrics_carry_the_route_templates(counted):
    client, _ = counted
    model = client.get("/v1/models").json()["models"][0]["name"]
    binary, headers = _binary_images(encode(photo_like(40, 40, seed=4), "PNG"))
    assert client.post(f"/v2/models/{model}/infer", content=binary, headers=headers).is_success
    assert client.post(
        f"/v2/models/{model}/versions/1/infer", content=binary, headers=headers
    ).is_success
    text = client.get("/metrics").text
    for template in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        assert re.search(
            r'serve_request_success_total\{[^}]*route="' + re.escape(template) + r'"[^}]*\} 1\.0',
            text,
        ), template


def test_other_requests_still_take_the_framework(counted):
    client, entered = counted
    model = client.get("/v1/models").json()["models"][0]["name"]
    entered.clear()
    client.get(f"/v2/models/{model}/infer")  # wrong method: the framework's 405
    client.post(f"/v2/models/{model}/infer/", content=b"{}")  # not the route's path
    client.post(f"/v2/models/{model}/ready", content=b"{}")
    assert [p for _, p in entered] == [
        f"/v2/models/{model}/infer",
        f"/v2/models/{model}/infer/",
        f"/v2/models/{model}/ready",
    ]


def test_a_payload_past_the_limit_is_413_and_closes_on_both_paths(make_client, monkeypatch):
    client = make_client(max_body_bytes=1000)
    model = client.get("/v1/models").json()["models"][0]["name"]
    binary, headers = _binary_images(encode(photo_like(60, 60, seed=5), "PNG"))
    assert len(binary) > 1000
    fast_answer = client.post(f"/v2/models/{model}/infer", content=binary, headers=headers)
    monkeypatch.setattr(fast, "_V2_INFER", re.compile(r"(?!)"))
    route_answer = client.post(f"/v2/models/{model}/infer", content=binary, headers=headers)
    assert fast_answer.status_code == 413 and fast_answer.headers["connection"] == "close"
    assert _comparable(fast_answer) == _comparable(route_answer)


async def _send_part_and_go(app, path: str, content_type: bytes) -> list[dict]:
    """A POST that declares 1000 bytes, sends 10 and disconnects; what the app sent back."""
    messages = iter(
        [
            {"type": "http.request", "body": b"x" * 10, "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent: list[dict] = []

    async def receive() -> dict:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", content_type), (b"content-length", b"1000")],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_client_that_disconnects_mid_body_is_counted_cancelled_not_a_failure(
    make_client, monkeypatch, caplog, fast_path
):
    client = make_client()
    model = client.get("/v1/models").json()["models"][0]["name"]
    if not fast_path:
        monkeypatch.setattr(fast, "PATH", "/nowhere")
        monkeypatch.setattr(fast, "_V2_INFER", re.compile(r"(?!)"))
    requests = [
        ("/v1/classify", b"image/png"),
        (f"/v2/models/{model}/infer", b"application/json"),
        (f"/v1/models/{model}:predict", b"application/json"),  # always the framework's
    ]
    caplog.clear()
    for path, content_type in requests:
        sent = client.portal.call(_send_part_and_go, client.app, path, content_type)
        starts = [m for m in sent if m["type"] == "http.response.start"]
        assert [m["status"] for m in starts] == [499], path
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    text = client.get("/metrics").text
    assert 'reason="internal_error"' not in text
    cancelled = [
        line
        for line in text.splitlines()
        if line.startswith("serve_request_failure_total{") and 'reason="cancelled"' in line
    ]
    assert len(cancelled) == len(requests) and all(c.endswith("} 1.0") for c in cancelled)
