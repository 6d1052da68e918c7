"""Asynchronous jobs with the Redis store, against a real redis-server (tests/support/redis.py).

Includes the case the store exists for: a replica SIGKILLed mid-job, whose jobs the other
replica takes over and finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from service.jobs.record import RUNNING, Job
from service.jobs.redis_store import RedisJobStore
from tests.support.helpers import encode, photo_like, start_server, stop_server
from tests.support.jobs import wait_job
from tests.support.tiny import tiny_loaded

pytest.importorskip("redis", reason="the redis extra is not installed (make venv)")
import redis  # noqa: E402

PREFIX = "serve:jobs:"


@pytest.fixture(autouse=True)
def empty_redis(redis_url):
    redis.Redis.from_url(redis_url).flushall()


def one_image() -> list:
    return [("images", ("a.jpg", encode(photo_like(40, 40)), "image/jpeg"))]


def test_jobs_keep_images_in_redis_until_they_end_and_cancelled_ones_never_run(
    make_client, redis_url
):
    r = redis.Redis.from_url(redis_url)
    release = threading.Event()

    def slow_model():
        release.wait(60)
        return tiny_loaded()

    client = make_client(model_factory=slow_model, wait_ready=False, redis_url=redis_url)
    files = [
        ("images", (f"{i}.jpg", encode(photo_like(40, 40, seed=i)), "image/jpeg")) for i in range(3)
    ]
    kept = client.post("/v1/jobs", files=files).json()
    cancelled = client.post("/v1/jobs", files=one_image()).json()
    assert r.xlen(PREFIX + "stream") == 2
    assert r.lrange(PREFIX + f"images:{kept['id']}", 0, -1) == [f[1][1] for f in files]
    assert r.ttl(PREFIX + f"job:{kept['id']}") == -1  # an accepted job never expires
    gone = client.delete(f"/v1/jobs/{cancelled['id']}")
    assert gone.status_code == 200 and gone.json()["status"] == "cancelled"
    assert not r.exists(PREFIX + f"images:{cancelled['id']}")
    release.set()
    done = wait_job(client, kept["id"])
    assert done["status"] == "succeeded" and len(done["result"]["predictions"]) == 3
    assert not r.exists(PREFIX + f"images:{kept['id']}")
    assert 0 < r.ttl(PREFIX + f"job:{kept['id']}") <= 3600
    deadline = time.monotonic() + 30
    while r.xlen(PREFIX + "stream"):  # acknowledged and deleted; the cancelled one dropped
        assert time.monotonic() < deadline, r.xlen(PREFIX + "stream")
        time.sleep(0.05)
    after = client.get(f"/v1/jobs/{cancelled['id']}").json()
    assert after["status"] == "cancelled" and after["attempts"] == 0 and "result" not in after


def test_finished_jobs_expire_in_redis(make_client, redis_url):
    client = make_client(redis_url=redis_url, job_ttl_s=1)
    job = client.post("/v1/jobs", files=one_image()).json()
    assert wait_job(client, job["id"])["status"] == "succeeded"
    deadline = time.monotonic() + 30
    while client.get(f"/v1/jobs/{job['id']}").status_code == 200:
        assert time.monotonic() < deadline, "the job never expired"
        time.sleep(0.2)
    assert client.get(f"/v1/jobs/{job['id']}").json()["error"]["code"] == "job_not_found"


def test_an_unrenewed_claim_is_taken_over_by_another_consumer(redis_url):
    async def scenario():
        stores = [
            RedisJobStore(redis_url, max_jobs=10, ttl_s=60, claim_idle_s=0.3) for _ in range(2)
        ]
        a, b = stores
        for store in stores:
            await store.start()
        job = Job(Job.new_id(), "default", 5, 1)
        await a.submit(job, [b"image-bytes"])
        claim = await a.take(1.0)  # a takes it, then "dies": it never renews nor acks
        assert claim.job.id == job.id and claim.job.attempts == 1
        assert await b.take(0.05) is None  # not idle long enough yet
        deadline = time.monotonic() + 20
        while (taken := await b.take(0.1)) is None:
            assert time.monotonic() < deadline
        assert taken.job.id == job.id and taken.job.status == RUNNING
        assert taken.job.attempts == 2 and taken.images == [b"image-bytes"] and b.claimed == 1
        await b.ack(taken)
        assert await a.redis.xlen(a.stream) == 0
        for store in stores:
            await store.close()

    asyncio.run(scenario())


def big_png(seed: int) -> bytes:
    """A 2000x2000 PNG of patterns: ~15 KB to send, tens of milliseconds to decode."""
    y, x = np.mgrid[0:2000, 0:2000]
    image = np.stack([(x * 7 + seed) % 256, (y * 3) % 256, ((x + y) * 5) % 256], -1)
    buf = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def test_a_replica_killed_mid_job_leaves_its_jobs_to_the_other(
    tiny_model_file, redis_url, tmp_path
):
    env = {
        "SERVE_WEIGHTS": str(tiny_model_file),
        "SERVE_REDIS_URL": redis_url,
        "SERVE_JOB_CLAIM_IDLE_S": "2",
        "SERVE_JOB_CONCURRENCY": "1",
        "SERVE_PREPROCESS_WORKERS": "1",
        "SERVE_MAX_IMAGES_PER_REQUEST": "4",
        "SERVE_MAX_IMAGES_PER_JOB": "200",
    }
    images = [big_png(i) for i in range(8)] * 20  # 160 images: seconds of decoding
    files = [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    a = start_server(env, tmp_path / "a.log")
    children: list[int] = []
    try:
        big = httpx.post(a.url + "/v1/jobs", files=files, timeout=60).json()
        small = httpx.post(a.url + "/v1/jobs", files=one_image(), timeout=60).json()
        deadline = time.monotonic() + 60
        while httpx.get(f"{a.url}/v1/jobs/{big['id']}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        children = _children(a.process.pid)  # its preprocessing worker and resource tracker
        a.process.send_signal(signal.SIGKILL)  # mid-job: the big job is running, small queued
        a.process.wait(30)
    finally:
        stop_server(a)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # orphans of the killed replica
    r = redis.Redis.from_url(redis_url)
    pending = r.xpending(PREFIX + "stream", "workers")
    assert pending["pending"] == 1  # the big job, claimed by the dead replica
    assert r.hget(PREFIX + f"job:{big['id']}", "status") == b"running"
    b = start_server(env, tmp_path / "b.log")
    try:
        for job, n in ((big, 160), (small, 1)):
            deadline = time.monotonic() + 120
            while (body := httpx.get(f"{b.url}/v1/jobs/{job['id']}").json())["status"] not in (
                "succeeded",
                "failed",
            ):
                assert time.monotonic() < deadline, body
                time.sleep(0.1)
            assert body["status"] == "succeeded", body
            assert len(body["result"]["predictions"]) == n
        assert httpx.get(f"{b.url}/v1/jobs/{big['id']}").json()["attempts"] == 2
        assert httpx.get(f"{b.url}/v1/jobs/{small['id']}").json()["attempts"] == 1
        metrics = httpx.get(b.url + "/metrics").text
        assert 'serve_jobs_total{event="claimed"} 1.0' in metrics
        assert "taken over" in b.log()
    finally:
        stop_server(b)


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux /proc)."""
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out
