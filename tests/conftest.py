"""Shared fixtures: tiny-model apps in process, and a real uvicorn server on a loopback port."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.helpers import (
    HARDENED_TOKEN,
    Server,
    encode,
    photo_like,
    start_server,
    stop_server,
)
from tests.support.tiny import save_tiny, tiny_loaded

# A real redis-server and a callback receiver, for the job tests (tests/support/redis.py).
pytest_plugins = ["tests.support.redis"]


@pytest.fixture(autouse=True)
def _pillow_pixel_limit() -> Iterator[None]:
    """``decode`` sets Pillow's process-wide pixel limit from its config; a test's small limit
    must not reach the next test's own ``Image.open``."""
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = before


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
    """Build a TestClient around an app with the tiny model; waits for readiness. With
    ``grpc_port`` the app serves gRPC on it too (in the TestClient's event loop)."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    clients: list[TestClient] = []

    def make(model_factory=tiny_loaded, wait_ready: bool = True, grpc_port: int = 0, **overrides):
        defaults = {
            "preprocess_workers": 1,
            "max_batch_size": 8,
            "batch_buckets": [1, 2, 4, 8],
            "model_instances": 1,  # batch composition is one runner's (instances: test_batcher)
        }
        settings = Settings(**{**defaults, **overrides})
        client = TestClient(create_app(settings, model_factory=model_factory, grpc_port=grpc_port))
        client.__enter__()
        clients.append(client)
        if wait_ready:
            deadline = time.monotonic() + 120
            while client.get("/readyz").status_code != 200:
                assert client.app.state.engine.get("default").state != "failed", (
                    client.app.state.engine.get("default").error
                )
                assert time.monotonic() < deadline, "service did not become ready"
                time.sleep(0.05)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.fixture(scope="session")
def server(tiny_model_file, tmp_path_factory) -> Iterator[Server]:
    """A real ``python -m service`` with the tiny model, shared by the session's tests. Its
    gRPC port is served by the native server (the default), as are the other servers'; the
    hardened server's and the hostile tests' first by grpcio's."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    srv = start_server({"SERVE_WEIGHTS": str(tiny_model_file)}, log_path)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def hardened_server(tiny_model_file, tmp_path_factory) -> Iterator[Server]:
    """A real server with the production protections on and small limits, for the reliability
    and security tests: bearer tokens, JSON logs with access lines, 1 s keep-alive, 1 MB body
    and gRPC message, 4 KB request head, grpcio's gRPC server. Requests need
    ``Authorization: Bearer HARDENED_TOKEN``."""
    log_path = tmp_path_factory.mktemp("hardened") / "server.log"
    srv = start_server(
        {
            "SERVE_WEIGHTS": str(tiny_model_file),
            "SERVE_AUTH_TOKENS": f"{HARDENED_TOKEN},second-token",
            "SERVE_LOG_FORMAT": "json",
            "SERVE_ACCESS_LOG": "true",
            "SERVE_KEEPALIVE_TIMEOUT_S": "1",
            "SERVE_MAX_BODY_BYTES": str(1024 * 1024),
            "SERVE_GRPC_MAX_MESSAGE_BYTES": str(1024 * 1024),
            "SERVE_MAX_HEADER_BYTES": "4096",
            "SERVE_GRPC_SERVER": "grpcio",
        },
        log_path,
    )
    yield srv
    stop_server(srv)
