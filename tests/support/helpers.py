"""Helpers shared by the tests, in a module with a unique name (test folders have conftests)."""

from __future__ import annotations

import http.server
import io
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]

# Bearer token accepted by the `hardened_server` fixture.
HARDENED_TOKEN = "hardened-test-token"


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


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path
    grpc_port: int = 0

    @property
    def grpc(self) -> str:
        """host:port of its gRPC service."""
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    env_overrides: dict[str, str], log_path: Path, timeout: float = 180, wait_ready: bool = True
) -> Server:
    """Run ``python -m service`` on a free loopback port (or ``SERVE_PORT`` of the overrides);
    wait for /readyz."""
    port = int(env_overrides.get("SERVE_PORT") or free_port())
    env = {
        **os.environ,
        "SERVE_HOST": "127.0.0.1",
        "SERVE_PORT": str(port),
        "SERVE_GRPC_PORT": str(free_port()),
        "SERVE_FRONTEND_PROCESSES": "2",
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
    server = Server(f"http://127.0.0.1:{port}", process, log_path, int(env["SERVE_GRPC_PORT"]))
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


def metric_value(text: str, name: str) -> float:
    """The value of the sample ``name`` (with its labels as rendered, e.g.
    ``serve_ready`` or ``x_total{stage="a"}``) in a Prometheus text scrape; 0 when absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def far() -> float:
    """A deadline no batcher test reaches."""
    return time.monotonic() + 30


async def run_with(batcher, coro):
    """Start ``batcher``, await ``coro``, stop the batcher (even when ``coro`` raises)."""
    batcher.start()
    try:
        return await coro
    finally:
        await batcher.stop()


class JsonHandler(http.server.BaseHTTPRequestHandler):
    """Base of the tests' stand-in HTTP servers: ``reply`` sends a JSON body; no access log."""

    def log_message(self, *args) -> None:
        pass

    def reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def crash_worker(array: np.ndarray) -> np.ndarray:
    """A cpu-stage function that kills the preprocessing worker running it (a codec crash)."""
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
    return array


def double(array: np.ndarray) -> np.ndarray:
    """A cpu-stage function: ``2 * array``."""
    return array * 2


def total(array: np.ndarray) -> np.ndarray:
    """A cpu-stage function with a 0-d output: the sum."""
    return array.sum()


def hold(array: np.ndarray) -> np.ndarray:
    """A cpu-stage function that keeps its worker busy ``array[0]`` seconds; answers its pid."""
    time.sleep(float(array[0]))
    return np.array([os.getpid()])


def refuse(array: np.ndarray) -> np.ndarray:
    """A cpu-stage function that raises one of the service's errors (it must keep its code)."""
    from service.errors import InvalidInput

    raise InvalidInput("refused on purpose", "refused", size=int(array.size))


def slow_double(array: np.ndarray) -> np.ndarray:
    """A cpu-stage function that takes 50 ms: its workers are busy when a test kills one."""
    time.sleep(0.05)
    return array * 2


def pause(array: np.ndarray) -> np.ndarray:
    """A cpu-stage function that keeps its item in flight for 3 s (after the model has run)."""
    time.sleep(3.0)
    return array
