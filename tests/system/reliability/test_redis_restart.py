"""Redis restarted during an asynchronous load: no accepted job is lost.

A real redis-server (append-only file, fsync on every write) on a loopback port, and a real
service using it as its job store. Jobs are submitted before, during and after a Redis restart;
every job that was answered 202 must end ``succeeded``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.helpers import free_port, start_server, stop_server

pytest.importorskip("service.jobs.redis_store", reason="the Redis job store is not in the tree")
pytest.importorskip("redis", reason="the redis extra is not installed")
REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed")


def _start_redis(port: int, folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            str(REDIS),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True
        ).stdout
        if "PONG" in out:
            return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def _submit(url: str, body: bytes, accepted: list[str], refused: list[int]) -> None:
    try:
        r = httpx.post(url + "/v1/jobs", content=body, headers={"content-type": "image/jpeg"})
    except httpx.HTTPError:
        refused.append(0)
        return
    if r.status_code == 202:
        accepted.append(r.json()["id"])
    else:
        assert r.status_code >= 500 or r.status_code == 429, r.text  # refused, not lost
        refused.append(r.status_code)


def test_no_accepted_job_is_lost_across_a_redis_restart(tiny_model_file, tmp_path, jpeg_bytes):
    port = free_port()
    data = tmp_path / "redis"
    data.mkdir()
    redis = _start_redis(port, data)
    srv = None
    try:
        srv = start_server(
            {
                "SERVE_WEIGHTS": str(tiny_model_file),
                "SERVE_REDIS_URL": f"redis://127.0.0.1:{port}/0",
            },
            tmp_path / "server.log",
        )
        accepted: list[str] = []
        refused: list[int] = []
        for _ in range(10):
            _submit(srv.url, jpeg_bytes, accepted, refused)
        redis.terminate()  # SIGTERM: Redis flushes its append-only file and exits
        redis.wait(20)
        for _ in range(5):  # while Redis is down: refused (5xx), never accepted and dropped
            _submit(srv.url, jpeg_bytes, accepted, refused)
        redis = _start_redis(port, data)
        for _ in range(10):
            _submit(srv.url, jpeg_bytes, accepted, refused)
        assert len(accepted) >= 20

        pending = set(accepted)
        statuses: dict[str, str] = {}
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                r = httpx.get(f"{srv.url}/v1/jobs/{job_id}")
                if r.status_code == 503 and r.headers.get("retry-after"):
                    continue  # a stale connection to the restarted Redis: retryable, not lost
                assert r.status_code == 200, f"job {job_id} lost: {r.status_code} {r.text}"
                statuses[job_id] = r.json()["status"]
                if statuses[job_id] in ("succeeded", "failed", "cancelled"):
                    pending.discard(job_id)
            time.sleep(0.2)
        assert not pending, {j: statuses.get(j) for j in pending}
        assert set(statuses.values()) == {"succeeded"}, statuses
        assert httpx.get(srv.url + "/readyz").status_code == 200
    finally:
        if srv is not None:
            stop_server(srv)
        redis.kill()
        redis.wait()
