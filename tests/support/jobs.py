"""Helpers of the job tests (a unique module name: conftest modules shadow each other)."""

from __future__ import annotations

import json
import time


def wait_job(client, job_id: str, states=("succeeded", "failed"), timeout: float = 60) -> dict:
    """Poll ``GET /v1/jobs/{id}`` until its status is one of ``states``."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] in states:
            return body
        assert time.monotonic() < deadline, f"job stayed {body['status']}"
        time.sleep(0.05)


def wait_callback(client, job_id: str, timeout: float = 60) -> dict:
    """Poll ``GET /v1/jobs/{id}`` until its callback is settled (delivered or failed): the
    receiver may hold the call before the service has read its answer and recorded it."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/v1/jobs/{job_id}").json()
        if body.get("callback", {}).get("status") in ("delivered", "failed"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def callback_json(call: dict) -> dict:
    return json.loads(call["body"])
