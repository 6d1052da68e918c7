"""Logs and answers: structured JSON with the request id on every request line; no payloads,
tokens or stack traces in answers; no payloads or tokens in logs."""

from __future__ import annotations

import base64
import json
import logging
import re

import httpx
from fastapi.testclient import TestClient

from service.app import create_app
from service.logs import JsonFormatter, RequestIdFilter
from service.settings import Settings
from tests.support.helpers import HARDENED_TOKEN
from tests.support.tiny import tiny_loaded

MARKER = "PAYLOAD-MARKER-7f3a"


def _json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        if line.startswith("{"):
            parsed.append(json.loads(line))
    return parsed


def test_request_log_lines_are_json_with_the_request_id(hardened_server, jpeg_bytes):
    auth = {"Authorization": f"Bearer {HARDENED_TOKEN}"}
    ids = []
    for headers in (
        {**auth, "content-type": "image/jpeg"},
        {**auth, "content-type": "image/jpeg", "X-Request-Id": "client-chosen-id-42"},
    ):
        r = httpx.post(hardened_server.url + "/v1/classify", content=jpeg_bytes, headers=headers)
        assert r.status_code == 200
        ids.append(r.headers["x-request-id"])
    assert ids[1] == "client-chosen-id-42"
    r = httpx.post(hardened_server.url + "/v1/classify", content=b"nope", headers=auth)
    assert r.status_code == 400
    ids.append(r.headers["x-request-id"])
    unauthorized = httpx.get(hardened_server.url + "/v1/models")
    ids.append(unauthorized.headers["x-request-id"])

    lines = _json_lines(hardened_server.log())
    assert lines, "no JSON log lines"
    access = [line for line in lines if line["logger"] == "service.access"]
    for rid in ids:
        mine = [line for line in access if line.get("request_id") == rid]
        assert len(mine) == 1, (rid, access[-5:])
        assert {"ts", "level", "message", "method", "route", "status", "duration_ms"} <= set(
            mine[0]
        )
    # Every line logged while handling a request carries its id (here: the 401 refusal).
    refusal = [line for line in lines if line["logger"] == "service.api.auth"]
    assert refusal and all(line.get("request_id") for line in refusal)
    # Python logging (service, uvicorn) is all JSON: other lines are TensorFlow's C++ start-up
    # chatter, never a Python log line in text format or a bare traceback.
    for line in hardened_server.log().splitlines():
        if line.strip() and not line.startswith("{"):
            assert not re.match(r"\d{4}-\d\d-\d\d |Traceback|uvicorn|service", line), line


def test_payloads_and_tokens_stay_out_of_answers_and_logs(hardened_server):
    auth = {"Authorization": f"Bearer {HARDENED_TOKEN}"}
    url = hardened_server.url + "/v1/classify"
    answers = [
        httpx.post(url, content=MARKER.encode() * 20, headers=auth),
        httpx.post(
            url,
            content=json.dumps({"images": [{"b64": MARKER}]}),
            headers={**auth, "content-type": "application/json"},
        ),
        httpx.post(
            url,
            content='{"images": [{"b64": "' + MARKER,
            headers={**auth, "content-type": "application/json"},
        ),
        httpx.post(
            url,
            json={"images": [{"b64": base64.b64encode(MARKER.encode()).decode()}]},
            headers=auth,
        ),
        httpx.post(url, params={"top_k": MARKER}, content=b"x", headers=auth),
        httpx.post(url, content=b"x", headers={"Authorization": f"Bearer {MARKER}"}),
        httpx.post(url, content=b"x", headers={"X-API-Key": MARKER}),
    ]
    for r in answers:
        assert 400 <= r.status_code < 500, r.text
        assert r.json()["error"]["code"]
        assert MARKER not in r.text or "top_k" in r.text  # top_k is echoed, cut to 32 chars
        assert "Traceback" not in r.text
    log = hardened_server.log()
    assert MARKER not in log
    assert HARDENED_TOKEN not in log


def test_an_unexpected_error_gets_an_id_and_no_stack_trace(caplog):
    app = create_app(Settings(preprocess_workers=1), model_factory=tiny_loaded)

    @app.get("/boom")
    async def boom():
        raise RuntimeError(f"secret internals {MARKER}")

    caplog.set_level(logging.ERROR)
    caplog.handler.addFilter(RequestIdFilter())  # as configure_logging does
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom", headers={"X-Request-Id": "req-boom-1"})
    assert r.status_code == 500
    body = r.json()
    assert body["error"]["code"] == "internal_error"
    assert "Traceback" not in r.text and MARKER not in r.text and ".py" not in r.text
    error_id = body["error"]["error_id"]
    records = [rec for rec in caplog.records if error_id in rec.getMessage()]
    assert records, "the error id is not in the log"
    # The log line for the operator carries the request id and the cause.
    formatted = JsonFormatter().format(records[0])
    assert json.loads(formatted)["request_id"] == "req-boom-1"
    assert re.search("secret internals", formatted)
