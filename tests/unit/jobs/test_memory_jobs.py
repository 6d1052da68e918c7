"""Asynchronous jobs with the in-memory store: submit, poll, callback, cancel, bounds, expiry."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.jobs.callbacks import SIGNATURE_HEADER, verify
from tests.support.helpers import encode, photo_like
from tests.support.jobs import callback_json, wait_callback, wait_job
from tests.support.tiny import tiny_loaded

SECRET = "test-callback-key"
JPEG = {"content-type": "image/jpeg"}


def images(n: int, bad: int | None = None) -> list[tuple[str, tuple[str, bytes, str]]]:
    files = []
    for i in range(n):
        data = b"not an image" if i == bad else encode(photo_like(48, 64, seed=i))
        files.append(("images", (f"{i}.jpg", data, "image/jpeg")))
    return files


@pytest.fixture(scope="module")
def client():
    """One app: 2 images per pipeline call (jobs go in chunks), callbacks to loopback only."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        preprocess_workers=1,
        max_batch_size=4,
        batch_buckets=[1, 4],
        max_images_per_request=2,
        max_images_per_job=6,
        callback_allowed_hosts="127.0.0.1",
        callback_secret=SECRET,
        callback_backoff_s=0.05,
    )
    with TestClient(create_app(settings, model_factory=tiny_loaded)) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield client


def test_a_job_answers_202_and_its_result_is_what_classify_answers(client):
    files = images(5)  # more than max_images_per_request: three pipeline calls
    r = client.post("/v1/jobs", files=files, data={"top_k": "3"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert r.headers["location"] == f"/v1/jobs/{body['id']}" == body["location"]
    assert body["status"] in ("queued", "running") and body["images"] == 5
    done = wait_job(client, body["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert done["created_at"] <= done["started_at"] <= done["finished_at"] < done["expires_at"]
    assert len(done["result"]["timing"]["batch_sizes"]) == 5
    for i, (_, (_, data, _)) in enumerate(files):
        direct = client.post("/v1/classify", content=data, headers=JPEG, params={"top_k": 3})
        assert [p["class_id"] for p in done["result"]["predictions"][i]] == [
            p["class_id"] for p in direct.json()["predictions"][0]
        ]


def test_a_bad_image_fails_the_job_naming_its_index(client):
    r = client.post("/v1/jobs", files=images(5, bad=3))
    done = wait_job(client, r.json()["id"])
    assert done["status"] == "failed" and "result" not in done
    assert done["error"]["code"] == "not_an_image"
    assert done["error"]["message"].startswith("image 3:")


@pytest.mark.parametrize(
    "kwargs, status, code",
    [
        ({"json": {"images": []}}, 400, "invalid_request"),
        (
            {"content": b"x", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        ({"files": images(7)}, 400, "too_many_images"),
        ({"files": images(1), "params": {"pipeline": "nope"}}, 404, "pipeline_not_found"),
        (
            {"files": images(1), "data": {"callback_url": "http://evil.example.com/hook"}},
            400,
            "callback_not_allowed",
        ),
        (
            {"files": images(1), "data": {"callback_url": "http://127.0.0.1.evil.example/x"}},
            400,
            "callback_not_allowed",
        ),
        (
            {"files": images(1), "data": {"callback_url": "ftp://127.0.0.1/x"}},
            400,
            "invalid_callback_url",
        ),
        (
            {"json": {"images": [{"b64": "AAAA"}], "callback_url": "http://u:p@127.0.0.1/x"}},
            400,
            "invalid_callback_url",
        ),
        (  # accepted by urlsplit, refused by the client that delivers callbacks
            {"json": {"images": [{"b64": "AAAA"}], "callback_url": "http://127.0.0.1/\r\nX: y"}},
            400,
            "invalid_callback_url",
        ),
        ({"json": {"images": [{"b64": "AAAA"}], "priority": 1}}, 400, "invalid_request"),
    ],
)
def test_bad_job_requests_get_json_errors(client, kwargs, status, code):
    r = client.post("/v1/jobs", **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_unknown_jobs_are_404_and_finished_ones_cannot_be_cancelled(client):
    for method in ("get", "delete"):
        r = getattr(client, method)("/v1/jobs/0123456789abcdef")
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    job = client.post("/v1/jobs", files=images(1)).json()
    wait_job(client, job["id"])
    r = client.delete(f"/v1/jobs/{job['id']}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_finished"


def test_the_callback_is_signed_and_retried_until_delivered(client, receiver):
    receiver.statuses = [503]  # the first attempt fails; the second is answered 200
    body = {"images": [{"b64": _b64(encode(photo_like(40, 40)))}], "callback_url": receiver.url}
    job = client.post("/v1/jobs", json=body).json()
    calls = receiver.wait(2)
    assert [c["status"] for c in calls] == [503, 200]
    for call in calls:
        assert verify(call["body"], SECRET, call["headers"][SIGNATURE_HEADER])
        assert not verify(call["body"], "another key", call["headers"][SIGNATURE_HEADER])
        assert call["headers"]["X-Job-Id"] == job["id"]
    sent = callback_json(calls[-1])
    assert sent["id"] == job["id"] and sent["status"] == "succeeded"
    assert len(sent["result"]["predictions"]) == 1
    done = wait_callback(client, job["id"])
    assert done["callback"]["status"] == "delivered" and done["callback"]["attempts"] == 2


def test_a_callback_refused_with_4xx_is_not_retried(client, receiver):
    receiver.statuses = [410]
    job = client.post("/v1/jobs", files=images(1), data={"callback_url": receiver.url}).json()
    done = wait_callback(client, job["id"])
    assert done["callback"]["status"] == "failed" and done["callback"]["attempts"] == 1
    assert done["callback"]["http_status"] == 410 and len(receiver.calls) == 1


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def test_queued_jobs_are_bounded_cancellable_and_run_once_the_model_is_ready(make_client):
    release = threading.Event()

    def slow_model():
        release.wait(60)
        return tiny_loaded()

    client = make_client(model_factory=slow_model, wait_ready=False, max_jobs=2, retry_after_s=2)
    first, second = (client.post("/v1/jobs", files=images(1)).json() for _ in range(2))
    full = client.post("/v1/jobs", files=images(1))
    assert full.status_code == 503 and full.json()["error"]["code"] == "jobs_full"
    assert full.headers["retry-after"] == "2"
    r = client.delete(f"/v1/jobs/{first['id']}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.get(f"/v1/jobs/{first['id']}").json()["status"] == "cancelled"
    third = client.post("/v1/jobs", files=images(1))  # the finished (cancelled) job made room
    assert third.status_code == 202
    assert client.get(f"/v1/jobs/{first['id']}").status_code == 404  # evicted, oldest finished
    release.set()
    for job in (second, third.json()):
        done = wait_job(client, job["id"])
        assert done["status"] == "succeeded" and done["attempts"] == 1


def test_a_running_job_cannot_be_cancelled(make_client):
    client = make_client()
    plane = client.app.state.dataplane
    gate = threading.Event()
    real = plane.infer

    async def held(*args, **kwargs):
        await asyncio.to_thread(gate.wait, 60)
        return await real(*args, **kwargs)

    plane.infer = held
    job = client.post("/v1/jobs", files=images(1)).json()
    wait_job(client, job["id"], states=("running",))
    r = client.delete(f"/v1/jobs/{job['id']}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_running"
    gate.set()
    assert wait_job(client, job["id"])["status"] == "succeeded"


def test_finished_jobs_expire_after_the_ttl(make_client):
    client = make_client(job_ttl_s=0.5)
    job = client.post("/v1/jobs", files=images(1)).json()
    assert wait_job(client, job["id"])["status"] == "succeeded"
    deadline = time.monotonic() + 30
    while client.get(f"/v1/jobs/{job['id']}").status_code == 200:
        assert time.monotonic() < deadline, "the job never expired"
        time.sleep(0.1)
    r = client.get(f"/v1/jobs/{job['id']}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
