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


def callback_json(call: dict) -> dict:
    return json.loads(call["body"])
