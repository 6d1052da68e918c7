"""Shared fixtures: tiny-model apps in process, and a real uvicorn server on a loopback port."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from tiny import save_tiny, tiny_loaded  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def encode(array: np.ndarray, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kwargs)
    return buf.getvalue()


def photo_like(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like RGB image (gradients plus noise), reproducible by seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            128 + 100 * np.sin(x / (17 + seed % 7)),
            128 + 100 * np.cos(y / (23 + seed % 5)),
            128 + 80 * np.sin((x + y) / 31),
        ],
        axis=-1,
    )
    noise = rng.normal(0, 12, size=base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def jpeg_bytes() -> bytes:
    return encode(photo_like(), "JPEG", quality=90)


@pytest.fixture(scope="session")
def png_bytes() -> bytes:
    return encode(photo_like(300, 400, seed=1), "PNG")


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory) -> Path:
    """A tiny classifier saved as a .keras file (32x32 input, 10 classes)."""
    return save_tiny(tmp_path_factory.mktemp("model") / "tiny.keras")


@pytest.fixture
def make_client() -> Iterator[Callable[..., object]]:
    """Build a TestClient around an app with the tiny model; waits for readiness."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    clients: list[TestClient] = []

    def make(model_factory=tiny_loaded, wait_ready: bool = True, **overrides):
        defaults = {
            "preprocess_workers": 1,
            "max_batch_size": 8,
            "batch_buckets": [1, 2, 4, 8],
        }
        settings = Settings(**{**defaults, **overrides})
        client = TestClient(create_app(settings, model_factory=model_factory))
        client.__enter__()
        clients.append(client)
        if wait_ready:
            deadline = time.monotonic() + 120
            while client.get("/readyz").status_code != 200:
                assert client.app.state.pipeline.state != "failed", client.app.state.pipeline.error
                assert time.monotonic() < deadline, "service did not become ready"
                time.sleep(0.05)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    env_overrides: dict[str, str], log_path: Path, timeout: float = 180, wait_ready: bool = True
) -> Server:
    """Run ``python -m service`` on a free loopback port; wait for /readyz."""
    port = free_port()
    env = {
        **os.environ,
        "SERVE_HOST": "127.0.0.1",
        "SERVE_PORT": str(port),
        "SERVE_PREPROCESS_WORKERS": "2",
        "SERVE_MAX_BATCH_SIZE": "8",
        "SERVE_BATCH_BUCKETS": "1,2,4,8",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **env_overrides,
    }
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [sys.executable, "-m", "service"], env=env, stdout=log_file, stderr=subprocess.STDOUT
    )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    if not wait_ready:
        return server
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited {process.returncode}:\n{server.log()[-3000:]}")
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server not ready in {timeout}s:\n{server.log()[-3000:]}")


def stop_server(server: Server, sig: int | None = None, timeout: float = 60) -> int:
    if server.process.poll() is None:
        if sig is None:
            server.process.terminate()
        else:
            server.process.send_signal(sig)
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


@pytest.fixture(scope="session")
def server(tiny_model_file, tmp_path_factory) -> Iterator[Server]:
    """A real ``python -m service`` with the tiny model, shared by the session's tests."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    srv = start_server({"SERVE_WEIGHTS": str(tiny_model_file)}, log_path)
    yield srv
    stop_server(srv)


HARDENED_TOKEN = "hardened-test-token"


@pytest.fixture(scope="session")
def hardened_server(tiny_model_file, tmp_path_factory) -> Iterator[Server]:
    """A real server with the production protections on and small limits, for the reliability
    and security tests: bearer tokens, JSON logs with access lines, 1 s keep-alive, 1 MB body,
    4 KB request head. Requests need ``Authorization: Bearer HARDENED_TOKEN``."""
    log_path = tmp_path_factory.mktemp("hardened") / "server.log"
    srv = start_server(
        {
            "SERVE_WEIGHTS": str(tiny_model_file),
            "SERVE_AUTH_TOKENS": f"{HARDENED_TOKEN},second-token",
            "SERVE_LOG_FORMAT": "json",
            "SERVE_ACCESS_LOG": "true",
            "SERVE_KEEPALIVE_TIMEOUT_S": "1",
            "SERVE_MAX_BODY_BYTES": str(1024 * 1024),
            "SERVE_MAX_HEADER_BYTES": "4096",
        },
        log_path,
    )
    yield srv
    stop_server(srv)
