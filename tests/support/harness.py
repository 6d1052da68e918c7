"""Helpers for the reliability and security tests: slow-to-decode images, a bounded load
generator for loopback servers, resident-memory sampling, and a decode sandbox with a timeout.

Traffic only ever goes to the loopback servers the tests start; every loop is bounded in count
and time.
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import httpx
import numpy as np
from PIL import Image


def slow_png(side: int = 2000) -> bytes:
    """A small PNG (tens of KB) that is slow to decode: ``side``² pixels of flat stripes."""
    y, x = np.mgrid[0:side, 0:side]
    a = np.zeros((side, side, 3), np.uint8)
    a[..., 0] = (x // 16) % 256
    a[..., 1] = (y // 16) % 256
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Outcome:
    status: int  # 0: no HTTP answer (connection error, client timeout)
    seconds: float
    code: str = ""
    retry_after: str | None = None
    error: str = ""


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)
    offered: int = 0
    wall_s: float = 0.0

    def of(self, status: int) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    def lost(self) -> list[Outcome]:
        """Requests neither answered 200 nor refused with 503 + Retry-After."""
        return [
            o for o in self.outcomes if not (o.status == 200 or (o.status == 503 and o.retry_after))
        ]

    @staticmethod
    def percentile(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else 0.0


async def _one(client: httpx.AsyncClient, url: str, body: bytes, headers: dict) -> Outcome:
    start = time.perf_counter()
    try:
        r = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return Outcome(0, time.perf_counter() - start, error=type(exc).__name__)
    code = ""
    if r.status_code != 200:
        try:
            code = r.json()["error"]["code"]
        except Exception:
            code = "not_json"
    return Outcome(r.status_code, time.perf_counter() - start, code, r.headers.get("retry-after"))


async def open_loop(
    url: str,
    body: bytes,
    rate_per_s: float,
    duration_s: float,
    headers: dict | None = None,
    client_timeout_s: float = 30.0,
    max_connections: int = 512,
) -> LoadResult:
    """Offer ``rate_per_s`` requests a second for ``duration_s``, whatever the answers take."""
    headers = {"content-type": "image/png", **(headers or {})}
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=64)
    result = LoadResult()
    async with httpx.AsyncClient(timeout=client_timeout_s, limits=limits) as client:
        tasks: list[asyncio.Task] = []
        start = time.perf_counter()
        n_total = int(rate_per_s * duration_s)
        for i in range(n_total):
            due = start + i / rate_per_s
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(client, url, body, headers)))
        result.offered = len(tasks)
        result.outcomes = list(await asyncio.gather(*tasks))
        result.wall_s = time.perf_counter() - start
    return result


async def closed_loop(
    url: str,
    body: bytes,
    concurrency: int,
    duration_s: float,
    headers: dict | None = None,
) -> LoadResult:
    """``concurrency`` clients, each sending its next request when the last is answered."""
    headers = {"content-type": "image/png", **(headers or {})}
    result = LoadResult()
    async with httpx.AsyncClient(timeout=60.0) as client:
        stop = time.perf_counter() + duration_s

        async def user() -> None:
            while time.perf_counter() < stop:
                result.outcomes.append(await _one(client, url, body, headers))

        start = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - start
    result.offered = len(result.outcomes)
    return result


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its children (the preprocessing workers)."""
    import psutil

    proc = psutil.Process(pid)
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def children(pid: int, module: str) -> list[int]:
    """Pids of a supervisor's children that run ``python -m <module>``."""
    import psutil

    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if module in child.cmdline():
                out.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return sorted(out)


def frontends(pid: int) -> list[int]:
    return children(pid, "service.server.frontend")


def engine(pid: int) -> int | None:
    found = children(pid, "service.engine.process")
    return found[0] if found else None


def frontend_of(sock, frontend_pids: list[int]) -> int | None:
    """The front end holding the server side of this client socket's connection."""
    import psutil

    local = sock.getsockname()[1]
    for pid in frontend_pids:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == local:
                return pid
    return None


# -- decode sandbox ------------------------------------------------------------------------


def _decode_outcome(data: bytes, max_pixels: int) -> str:
    """Runs in a spawned process: ``ok``, ``ImageError:<code>``, or ``UNEXPECTED:<type>``."""
    from service.errors import ImageError
    from service.preprocess.decode import PreprocessConfig, decode

    try:
        out = decode(data, PreprocessConfig(size=(32, 32), max_pixels=max_pixels))
    except ImageError as exc:
        return f"ImageError:{exc.code}"
    except BaseException as exc:  # what the fuzz test is looking for
        return f"UNEXPECTED:{type(exc).__name__}: {exc}"[:300]
    if out.pixels.shape != (32, 32, 3) or out.pixels.dtype != np.uint8:
        return f"UNEXPECTED:shape {out.pixels.shape} {out.pixels.dtype}"
    return "ok"


def hang_forever(data: bytes, max_pixels: int) -> str:
    """A stand-in for a decoder that never returns (tests of the sandbox itself)."""
    time.sleep(3600)
    return "ok"


def die(data: bytes, max_pixels: int) -> str:
    """A stand-in for a decoder that kills its process (a segfault in a codec)."""
    import os

    os._exit(139)


class DecodeSandbox:
    """``preprocess.decode`` in a spawned process, with a timeout: a hang or a crash in a codec
    is reported as such instead of taking the test run down with it."""

    def __init__(self, timeout_s: float = 20.0, max_pixels: int = 50_000_000, fn=None):
        self.timeout_s = timeout_s
        self.max_pixels = max_pixels
        self.fn = fn or _decode_outcome
        self._pool = self._new()

    @staticmethod
    def _new() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))

    def outcome(self, data: bytes) -> str:
        future = self._pool.submit(self.fn, data, self.max_pixels)
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            self._kill()
            return "HANG"
        except Exception as exc:  # BrokenProcessPool: the decoder killed its process
            self._kill()
            return f"CRASH:{type(exc).__name__}"

    def _kill(self) -> None:
        for proc in list(getattr(self._pool, "_processes", {}).values()):
            proc.kill()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class GatedRunner:
    """Wraps the batcher's run function: counts the items the model computes, and holds the
    first batch until ``release`` is set (so that later requests queue up behind it)."""

    def __init__(self, batcher):
        self.inner = batcher._run_fns[0]  # the one instance (tests pin model_instances=1)
        self.items = 0
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        batcher._run_fns[0] = self
        batcher._ahead_fns = None  # every batch through this gate

    def __call__(self, payloads):
        self.calls += 1
        self.items += len(payloads)
        if self.calls == 1:
            self.entered.set()
            assert self.release.wait(60), "test never released the runner"
        return self.inner(payloads)
