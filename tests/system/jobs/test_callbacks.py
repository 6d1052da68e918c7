"""Job callbacks from a real ``python -m service`` (two front ends, the pod's shared job store),
as docs/JOBS.md ("Callbacks") shows them: the job's ``GET`` body, signed, POSTed when it ends."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator

import httpx
import pytest

from tests.support.helpers import encode, photo_like, start_server, stop_server
from tests.support.jobs import wait_callback, wait_job

SECRET = "0123456789abcdef" * 4


@pytest.fixture(scope="module")
def callback_server(tiny_model_file, tmp_path_factory) -> Iterator:
    srv = start_server(
        {
            "SERVE_WEIGHTS": str(tiny_model_file),
            "SERVE_CALLBACK_ALLOWED_HOSTS": "127.0.0.1",
            "SERVE_CALLBACK_SECRET": SECRET,
        },
        tmp_path_factory.mktemp("callbacks") / "server.log",
    )
    yield srv
    stop_server(srv)


def verified(body: bytes, header: str, secret: str) -> bool:
    """docs/JOBS.md's check, as a receiver would copy it."""
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


def test_the_callback_carries_the_finished_jobs_get_body(callback_server, receiver):
    with httpx.Client(base_url=callback_server.url, timeout=30) as client:
        r = client.post(
            "/v1/jobs",
            files=[("images", ("cat.jpg", encode(photo_like(40, 40)), "image/jpeg"))],
            data={"callback_url": receiver.url, "top_k": "3"},
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        [call] = receiver.wait(1)
        polled = wait_job(client, job_id)
        settled = wait_callback(client, job_id)
    assert call["headers"]["Content-Type"] == "application/json"
    assert call["headers"]["X-Job-Id"] == job_id
    assert verified(call["body"], call["headers"]["X-Signature-256"], SECRET)
    sent = json.loads(call["body"])
    # The body is what GET answered when the job ended: the same job, finished and with its
    # expiry, not a copy from before the store stamped it (only its callback block was still
    # pending then).
    assert sent["expires_at"] is not None
    assert {k: v for k, v in sent.items() if k != "callback"} == {
        k: v for k, v in polled.items() if k != "callback"
    }
    assert sent["callback"] == {"url": receiver.url, "status": "pending", "attempts": 0}
    assert (settled["callback"]["status"], settled["callback"]["attempts"]) == ("delivered", 1)
