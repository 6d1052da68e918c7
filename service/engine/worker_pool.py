"""The cpu stages' worker processes: *spawned* processes that run a stage's function on one
item at a time, fed by the event loop itself.

A ``cpu`` stage between two model stages (``preprocess 2`` of the pipeline design) is CPU-bound
Python and NumPy that would hold the GIL; in worker processes it runs in parallel with itself
and with the model runners. The transport is built for that one job rather than
``ProcessPoolExecutor``'s general one, because on the hot path its costs were the server's:

* Each worker owns two shared-memory slots: the parent copies the item into the input slot and
  the worker writes its output into the output slot. Only a small header crosses the worker's
  pipe. (``ProcessPoolExecutor`` pickles every item through pipes, in 64 KB pieces.) Payloads
  larger than a slot, and every payload where ``/dev/shm`` has no room, travel through the pipe
  instead.
* The event loop reads the pipes directly (``loop.add_reader``): no manager or feeder thread
  between a request and its worker, nothing for the GIL to hand back and forth.
* A worker holds one item at a time and gets the next the moment it answers, so a slow item
  never has a queue of others waiting behind it in a busy worker.

A worker that dies (OOM kill, SIGKILL, a crash in native code) is replaced on its own; the item
it held is retried once on another worker, so only an item that kills workers twice fails
(503 ``worker_lost``). The rest of the pool never notices.

Imports nothing from TensorFlow: worker processes import this module to find their entry
points, and the functions they run must not import it either. The asynchronous methods must be
called from one event loop at a time (the pool moves to a new loop when it is idle, as tests
with ``asyncio.run`` need).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import multiprocessing
import os
import pickle
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from ..errors import ShuttingDown, WorkerLost
from ..wire import segments
from .worker import buffer
from .worker import main as worker_main

log = logging.getLogger(__name__)

# A model's output row is a few KB (2048 float32 features: 8 KB); larger items go through the
# pipe. Containers get a 64 MiB /dev/shm by default; 16 workers take 4 MiB of it.
SLOT_BYTES = 1 << 17
START_TIMEOUT_S = 120.0


class PoolClosed(ShuttingDown):
    """The pool was closed (the service is shutting down)."""


# -- the parent side ------------------------------------------------------------------------


@dataclass
class _Task:
    function: str
    payload: bytes | memoryview
    meta: Any
    future: asyncio.Future
    deaths: int = 0


@dataclass
class _Worker:
    index: int
    process: Any
    conn: Connection
    slot_in: SharedMemory | None
    slot_out: SharedMemory | None
    dead: bool = False
    task: _Task | None = None
    reading: bool = False  # registered with the loop
    sending: asyncio.Future | None = None  # a large payload being written by a thread


@dataclass
class _Slots:
    """A worker position's shared memory (both or neither), kept across replacements."""

    slot_in: SharedMemory | None = None
    slot_out: SharedMemory | None = None

    def segments(self) -> list[SharedMemory]:
        return [s for s in (self.slot_in, self.slot_out) if s is not None]


def _shared_memory(size: int) -> SharedMemory | None:
    """A segment with its pages reserved (so a full /dev/shm is an error now, not a SIGBUS
    later), or None where there is no room: that worker's payloads go through its pipe."""
    try:
        shm = segments.create(size)
    except OSError as exc:
        log.warning("no shared memory for the worker pool (%s); using pipes", exc)
        return None
    fd = getattr(shm, "_fd", -1)
    if fd >= 0 and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            log.warning(
                "/dev/shm has no room for %d bytes (%s); this worker uses pipes",
                size,
                exc,
            )
            shm.close()
            shm.unlink()
            return None
    return shm


class WorkerPool:
    """Runs cpu-stage functions in ``workers`` spawned processes.

    Args:
        workers: number of processes.
        on_restart: called (with no arguments) each time a dead worker is replaced.
        niceness: added to the workers' CPU niceness (0: same priority as the server).
        shared_memory: pass payloads through shared-memory slots (False: pipes only).
    """

    def __init__(
        self,
        workers: int,
        on_restart=None,
        niceness: int = 0,
        shared_memory: bool = True,
    ):
        if workers < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.workers = workers
        self.niceness = niceness
        self.shared_memory = shared_memory
        self._on_restart = on_restart
        self._ctx = multiprocessing.get_context("spawn")  # never fork: TensorFlow issue 8220
        self._lock = threading.Lock()
        self._slots: list[_Slots] = []
        self._workers: list[_Worker] = []
        self._idle: collections.deque[_Worker] = collections.deque()
        self._waiting: collections.deque[_Task] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.pending = 0  # items submitted and not answered yet

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers and wait until every one has said it is ready (blocking)."""
        with self._lock:
            if self._workers or self._closed:
                return
            for _ in range(self.workers):
                slots = _Slots()
                if self.shared_memory:
                    slots.slot_in = _shared_memory(SLOT_BYTES)
                    slots.slot_out = _shared_memory(SLOT_BYTES) if slots.slot_in else None
                    if slots.slot_out is None and slots.slot_in is not None:
                        slots.slot_in.close()
                        slots.slot_in.unlink()
                        slots.slot_in = None
                self._slots.append(slots)
            self._workers = [self._spawn(i) for i in range(self.workers)]
        deadline = time.monotonic() + START_TIMEOUT_S
        for worker in self._workers:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not worker.conn.poll(remaining):
                raise RuntimeError("a cpu-stage worker did not start in time")
            try:
                status, pid, _ = pickle.loads(worker.conn.recv_bytes())
            except EOFError:
                worker.process.join(5)
                raise RuntimeError(
                    f"a cpu-stage worker exited while starting "
                    f"(exit code {worker.process.exitcode})"
                ) from None
            assert status == "ready" and pid == worker.process.pid
            self._idle.append(worker)
        transport = "shared memory" if self._slots[0].segments() else "pipes"
        log.info(
            "cpu-stage worker pool: %d processes %s (%s)",
            self.workers,
            self.worker_pids(),
            transport,
        )

    def _spawn(self, index: int) -> _Worker:
        slots = self._slots[index]
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main,
            args=(
                child,
                self.niceness,
                slots.slot_in.name if slots.slot_in else None,
                slots.slot_out.name if slots.slot_out else None,
            ),
            name=f"cpu-worker-{index}",
            daemon=True,
        )
        process.start()
        child.close()  # the worker holds the only other end: its death reads as EOF here
        return _Worker(index, process, parent, slots.slot_in, slots.slot_out)

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if not w.dead and w.process.pid]

    def close(self) -> None:
        """Stop the workers and free the shared memory; what is still waiting fails."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._on_loop(self._detach)
        for worker in self._workers:
            worker.dead = True
            if worker.sending is None:  # else the worker is killed below, then _sent closes
                worker.conn.close()  # EOF: the worker returns from its loop
        for worker in self._workers:
            worker.process.join(5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(5)
            if worker.process.exitcode is not None:
                worker.process.close()  # its sentinel pipe
        for slots in self._slots:
            for shm in slots.segments():
                shm.close()
                with contextlib.suppress(FileNotFoundError):
                    shm.unlink()

    def _on_loop(self, fn) -> None:
        """Run ``fn`` on the bound event loop's thread (now, if that is this thread or the loop
        no longer runs) and wait for it."""
        loop = self._loop
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if loop is None or current is loop or not loop.is_running():
            fn()
            return
        done = threading.Event()

        def call() -> None:
            try:
                fn()
            finally:
                done.set()

        loop.call_soon_threadsafe(call)
        done.wait(10)

    def _detach(self) -> None:
        """Forget the loop: stop reading the pipes and fail every unanswered item."""
        loop, self._loop = self._loop, None
        for worker in self._workers:
            if worker.reading and loop is not None and not loop.is_closed():
                with contextlib.suppress(Exception):
                    loop.remove_reader(worker.conn.fileno())
            worker.reading = False
            if worker.task is not None:
                self._fail(worker.task, PoolClosed("the worker pool is closed"))
                worker.task = None
        while self._waiting:
            self._fail(self._waiting.popleft(), PoolClosed("the worker pool is closed"))

    def _bind(self) -> None:
        """Read the workers' pipes on the running loop (moving from an idle earlier loop)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None and not self._loop.is_closed() and self._busy():
            raise RuntimeError("the worker pool is in use on another event loop")
        self._detach()
        self._loop = loop
        for worker in list(self._workers):
            self._watch(worker)

    def _busy(self) -> bool:
        return bool(self._waiting) or any(w.task is not None for w in self._workers)

    def _watch(self, worker: _Worker) -> None:
        assert self._loop is not None
        self._loop.add_reader(worker.conn.fileno(), self._on_readable, worker)
        worker.reading = True

    # -- work ------------------------------------------------------------------------------

    async def apply(self, function_path: str, array: np.ndarray) -> tuple[np.ndarray, float]:
        """A cpu stage's function on one item in a worker: ``(output, seconds)``."""
        if self._closed or not self._workers:
            raise PoolClosed("the worker pool is not running")
        array = np.ascontiguousarray(array)
        meta = (array.dtype.str, array.shape)
        self._bind()
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(_Task(function_path, array.data.cast("B"), meta, future))
        self.pending += 1
        try:
            self._dispatch()
            return await future
        finally:
            self.pending -= 1

    def _dispatch(self) -> None:
        while self._idle and self._waiting:
            task = self._waiting.popleft()
            if task.future.done():  # its request gave up while it waited
                continue
            worker = self._idle.popleft()
            if worker.dead:
                self._waiting.appendleft(task)
                continue
            self._send(worker, task)

    def _send(self, worker: _Worker, task: _Task) -> None:
        worker.task = task
        size = len(task.payload)
        inline = worker.slot_in is not None and size <= worker.slot_in.size
        try:
            if inline:
                assert worker.slot_in is not None
                buffer(worker.slot_in)[:size] = task.payload
            worker.conn.send_bytes(pickle.dumps((task.function, size if inline else -1, task.meta)))
        except OSError:  # the worker is already gone; this item never reached it
            worker.task = None
            self._waiting.appendleft(task)
            self._lost(worker)
            return
        if not inline:  # a large payload: the pipe, from a thread, so the loop never blocks
            assert self._loop is not None
            worker.sending = self._loop.run_in_executor(None, worker.conn.send_bytes, task.payload)
            worker.sending.add_done_callback(lambda f: self._sent(worker, f))

    @staticmethod
    def _sent(worker: _Worker, sent: asyncio.Future) -> None:
        """A thread finished writing a large payload (or failed: the worker's death is seen
        as EOF by the reader, which retries the item). The pipe of a worker that died meanwhile
        is closed only now, so its descriptor cannot be reused under the writing thread."""
        if not sent.cancelled():
            sent.exception()
        worker.sending = None
        if worker.dead:
            worker.conn.close()

    def _on_readable(self, worker: _Worker) -> None:
        try:
            status, body, size = pickle.loads(worker.conn.recv_bytes())
            if status == "ok":
                info, dtype, shape = body
                if size >= 0:
                    assert worker.slot_out is not None
                    view = np.frombuffer(buffer(worker.slot_out), dtype=np.uint8, count=size)
                    out = view.view(dtype).reshape(shape).copy()
                    del view
                else:
                    out = np.frombuffer(bytearray(worker.conn.recv_bytes()), dtype).reshape(shape)
        except (EOFError, OSError):
            self._lost(worker)
            self._dispatch()  # its item, retried, may go to an idle worker at once
            return
        if status == "ready":  # a replacement has started
            self._idle.append(worker)
            self._dispatch()
            return
        task, worker.task = worker.task, None
        self._idle.append(worker)
        self._dispatch()
        if task is None or task.future.done():
            return
        if status == "ok":
            task.future.set_result((out, info))
        else:
            task.future.set_exception(body)

    def _lost(self, worker: _Worker) -> None:
        """A worker died: replace it, and retry the item it held once (on any worker)."""
        if worker.dead:
            return
        worker.dead = True
        if worker.reading and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(worker.conn.fileno())
            worker.reading = False
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        if worker.sending is None:  # else closed when the writing thread is done (_sent)
            worker.conn.close()
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(1)
        pid, exitcode = worker.process.pid, worker.process.exitcode
        if exitcode is not None:
            worker.process.close()  # its sentinel pipe
        task, worker.task = worker.task, None
        if task is not None:
            task.deaths += 1
            if task.deaths >= 2:
                self._fail(task, WorkerLost("a cpu-stage worker died on this item, twice; retry"))
            else:
                self._waiting.appendleft(task)
        if self._closed:
            return
        log.error(
            "cpu-stage worker %d (pid %s) died, exit code %s; replacing it",
            worker.index,
            pid,
            exitcode,
        )
        replacement = self._spawn(worker.index)
        self._workers[worker.index] = replacement
        if self._loop is not None:
            self._watch(replacement)  # it becomes idle when it says ready
        if self._on_restart:
            self._on_restart()

    @staticmethod
    def _fail(task: _Task, exc: BaseException) -> None:
        if not task.future.done():
            loop = task.future.get_loop()
            if loop.is_closed():
                return
            task.future.set_exception(exc)
