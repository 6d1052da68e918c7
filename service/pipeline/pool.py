"""The preprocessing stage: a pool of *spawned* worker processes running ``preprocess.decode``
(and the functions of ``cpu`` stages, ``_worker_apply``).

Decoding and resizing are CPU-bound and hold the GIL; in worker processes they run in parallel
with each other and with the model runner. A worker that dies (OOM kill, SIGKILL, a crash in a
codec) breaks a ``ProcessPoolExecutor`` for everything in it; the pool is then rebuilt and the
affected items are retried once, so only an image that kills workers twice fails (with 503).

Imports nothing from TensorFlow: worker processes import this module to find their entry points.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from .preprocess import PreprocessConfig, Preprocessed, decode

log = logging.getLogger(__name__)

_CONFIG: PreprocessConfig | None = None
_FUNCTIONS: dict[str, Any] = {}


class WorkerLost(RuntimeError):
    """A preprocessing worker died while holding this item, twice."""


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the server process dies, even by SIGKILL."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: workers notice a broken pipe instead
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _worker_init(cfg: PreprocessConfig, niceness: int = 0) -> None:
    global _CONFIG
    _CONFIG = cfg
    _die_with_parent()
    # Preprocessing yields the CPU to the model runner's threads: on a CPU node both compete,
    # and a decode that preempts one of TensorFlow's intra-op threads stalls the whole op.
    # On a GPU node the runner mostly waits on the device, so the workers get the CPU anyway.
    if niceness:
        os.nice(niceness)
    # One thread per worker for NumPy/Pillow: the pool is the parallelism.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _worker_decode(data: bytes) -> Preprocessed:
    assert _CONFIG is not None, "worker not initialised"
    return decode(data, _CONFIG)


def load_function(path: str) -> Any:
    """Import ``package.module:function`` (once per process)."""
    function = _FUNCTIONS.get(path)
    if function is None:
        module, _, name = path.partition(":")
        try:
            function = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ImportError(f"cannot import {path!r}: {exc}") from None
        if not callable(function):
            raise ImportError(f"{path!r} is not callable")
        _FUNCTIONS[path] = function
    return function


def _worker_apply(function_path: str, array: np.ndarray) -> tuple[np.ndarray, float]:
    """A cpu stage: ``function(array)`` as ``float32``, and the seconds it took."""
    start = time.perf_counter()
    out = np.asarray(load_function(function_path)(array), dtype=np.float32)
    return out, time.perf_counter() - start


def _worker_ping(hold_s: float) -> int:
    time.sleep(hold_s)  # keeps this worker busy so the next ping starts another process
    return os.getpid()


class PreprocessPool:
    """Runs ``decode`` in ``workers`` spawned processes.

    Args:
        cfg: the preprocessing configuration, sent to each worker once.
        workers: number of processes.
        on_restart: called (with no arguments) each time the pool is rebuilt.
        niceness: added to the workers' CPU niceness (0: same priority as the server).
    """

    def __init__(self, cfg: PreprocessConfig, workers: int, on_restart=None, niceness: int = 0):
        self.cfg = cfg
        self.workers = workers
        self.niceness = niceness
        self._on_restart = on_restart
        self._executor: ProcessPoolExecutor | None = None
        self._generation = 0
        self._lock = threading.Lock()
        self.pending = 0

    def _new_executor(self) -> ProcessPoolExecutor:
        # spawn, never fork: the parent has TensorFlow loaded (TensorFlow issue 8220).
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(self.cfg, self.niceness),
        )

    def start(self) -> None:
        """Start the workers and wait until every one answers (blocking; call in a thread)."""
        with self._lock:
            if self._executor is None:
                self._executor = self._new_executor()
            executor = self._executor
        # Busy pings make the executor start every process; repeat until each has answered
        # (its initializer has run), so readiness means the whole pool is up.
        pids: set[int] = set()
        deadline = time.monotonic() + 120
        while len(pids) < self.workers and time.monotonic() < deadline:
            pings = [executor.submit(_worker_ping, 0.05) for _ in range(self.workers * 2)]
            pids |= {f.result(timeout=120) for f in pings}
        log.info("preprocessing pool: %d worker processes %s", self.workers, sorted(pids))

    def worker_pids(self) -> list[int]:
        executor = self._executor
        if executor is None:
            return []
        return [p.pid for p in getattr(executor, "_processes", {}).values() if p.pid]

    def _submit(self) -> tuple[int, ProcessPoolExecutor]:
        with self._lock:
            if self._executor is None:
                raise RuntimeError("preprocessing pool is not started")
            return self._generation, self._executor

    def _rebuild(self, broken_generation: int) -> None:
        with self._lock:
            if self._generation != broken_generation:
                return  # someone else already rebuilt it
            old = self._executor
            self._executor = self._new_executor()
            self._generation += 1
        log.error("a preprocessing worker died; pool rebuilt (generation %d)", self._generation)
        if self._on_restart:
            self._on_restart()
        if old is not None:
            threading.Thread(target=old.shutdown, kwargs={"wait": False}, daemon=True).start()

    async def run(self, data: bytes) -> Preprocessed:
        """Decode one image in a worker. Raises ``ImageError`` for bad input."""
        self.pending += 1
        try:
            return await self._call(_worker_decode, data, what="decoding this image")
        finally:
            self.pending -= 1

    async def apply(self, function_path: str, array: np.ndarray) -> tuple[np.ndarray, float]:
        """A cpu stage's function on one item in a worker: ``(output, seconds)``."""
        return await self._call(_worker_apply, function_path, array, what="running a cpu stage")

    async def _call(self, fn: Any, *args: Any, what: str) -> Any:
        """``fn(*args)`` in a worker; retried once on a fresh pool if the worker dies."""
        for attempt in (1, 2):
            generation, executor = self._submit()
            try:
                fut: Future = executor.submit(fn, *args)
            except BrokenProcessPool:
                self._rebuild(generation)
                continue
            try:
                return await asyncio.wrap_future(fut)
            except BrokenProcessPool:
                self._rebuild(generation)
                if attempt == 2:
                    break
        raise WorkerLost(f"a preprocessing worker died while {what}")

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
