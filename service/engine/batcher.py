"""The dynamic batcher: gathers items from all concurrent requests into batches for one runner.

Policy (it costs nothing at low load and fills batches under load):

* When the runner is idle and items are waiting, they go to it at once, up to
  ``max_batch_size``: a lone request never waits for company.
* While the runner executes a batch, new items queue up; the moment it is done the next batch
  takes everything waiting. Batches thus grow with the load by themselves.
* Regrouping, under load only: when the runner finishes a batch while the load continues (items
  keep arriving), the next batch may wait for as many items as the last batch plus those that
  were already queued when it finished — closed-loop clients just answered come back within
  milliseconds — and starts as soon as they are there, but never waits longer than
  ``regroup_s`` nor ``regroup_fraction`` of the last batch's compute time. Without
  it, sixteen clients settle into two alternating half-size batches, and on a CPU a batch of 8
  costs more per image than a batch of 16. An idle service (no item for longer than the
  regroup budget) never holds: a lone request runs at once.
* Coalescing, under a high arrival rate only: when items arrive faster than the fixed cost of
  one execution (what a batch costs whatever its size, measured at warm-up), a short queue is
  held for at most that cost so that the items due meanwhile run in the same batch, instead of
  one execution per image. A slow model (ResNet50 on a CPU: no fixed cost to speak of) and an
  arrival after a pause never hold.
* ``max_batch_delay_ms`` > 0 (off by default) additionally holds a partial batch, with an idle
  runner, until it is full or its oldest item has waited that long (Triton's
  ``max_queue_delay``): useful only on accelerators whose batch cost barely grows with size.
* Items whose deadline has passed are dropped before they reach the model.
* Instances (Triton's instance group): given several run functions, the batcher keeps each busy
  with its own batch, dispatching to whichever is free. A batch then takes at most its share of
  the work in the stage (queued plus running, divided by the instances), so the load splits into
  batches that run side by side and finish at different times: while one instance computes, the
  clients of another's last batch send their next images, and the cores never wait for both.
  With one instance this rule never limits a batch.

* Ahead of time (``ahead``, on accelerators): when every instance is busy and at least as many
  items are queued as the batch running (the load is steady), they are taken now for the next
  batch and assembled (copied into the instance's other input buffer
  and, on an accelerator, sent to the device) in an assembly thread, so that the instance
  starts it the moment it finishes the one it runs: it never waits for host work between
  batches under load. ``serve_batch_assembly_seconds_total{when}`` says how much assembly ran
  ahead and how much the runner waited for (``inline``).

Items come in bulk (:meth:`DynamicBatcher.submit_many`: all the items of one message of a
front end, with one wake-up) and each carries a *reply*: an ``asyncio.Future`` for callers in
this process (:meth:`DynamicBatcher.submit`), or the accelerator process's ticket, which
collects the answers of one batch into one message per front end. The batcher runs on the
event loop; each instance's ``run`` executes in its own dedicated thread (the backends release
the GIL), so postprocessing happens where the replies go, off the runner.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import DeadlineExceeded, ModelError, QueueFull, ShuttingDown
from ..metrics import Metrics
from ..pipeline.info import BatchInfo

log = logging.getLogger(__name__)

# A batch's items -> (outputs, padded size, compute seconds[, assembly seconds]).
RunFn = Callable[[list[np.ndarray]], tuple]
# Assembling ahead: items -> prepared batch (in the assembly thread); prepared -> as RunFn.
AssembleFn = Callable[[list[np.ndarray]], Any]
ExecuteFn = Callable[[Any], tuple]


_GIVEN_UP = ShuttingDown("the request gave up", "cancelled")


class Reply(Protocol):
    """Where one item's answer goes: ``(output_row, BatchInfo)`` or a ``ServeError``.

    The batcher answers every item it queued exactly once, even one whose reply is already
    ``done()`` (its request gave up: it is dropped before the model, or its batch was
    running): a reply ignores what comes after it is done, and the accelerator process's
    ticket learns from it that the item's slot is free again.
    """

    def done(self) -> bool: ...

    def set_result(self, result: tuple[np.ndarray, BatchInfo]) -> None: ...

    def set_exception(self, exc: BaseException) -> None: ...


@dataclass(slots=True)
class _Item:
    payload: np.ndarray
    reply: Reply
    deadline: float
    enqueued: float


class DynamicBatcher:
    """Batches items for ``run_fn`` (see module docstring for the policy).

    Args:
        name: stage name, used in metrics labels and thread names.
        run_fn: executes a list of items, returns (outputs, padded size, compute seconds); or
            a sequence of such functions, one per instance, which may run at the same time
            (each owns its buffers; they may share one model).
        max_batch_size: the most items in one batch.
        max_delay_s: how long to hold a partial batch for an idle runner (0: never).
        max_queue: bound of the queue; ``submit`` raises ``QueueFull`` past it.
        metrics: the service's metrics.
        exact_sizes: batch sizes the runner executes without padding (its buckets). When
            given, a batch takes the largest of these that the queue fills and leaves the rest
            for the next batch, so no slot is spent on padding: on a CPU a padded slot costs as
            much as a real image. Omit it on GPUs, where padding is almost free and latency
            matters more.
        regroup_s: the longest a batch waits, under load, to regroup or coalesce (0: never).
        regroup_fraction: and at most this fraction of the last batch's compute time.
        call_cost_s: the fixed cost of one execution (0: never coalesce).
        ahead: per instance, the ``(assemble, execute)`` halves of its ``run_fn``, to assemble
            a full batch while the instance still runs the one before; None: never ahead.
    """

    def __init__(
        self,
        name: str,
        run_fn: RunFn | Sequence[RunFn],
        *,
        max_batch_size: int,
        max_delay_s: float = 0.0,
        max_queue: int = 1024,
        metrics: Metrics,
        exact_sizes: list[int] | None = None,
        regroup_s: float = 0.0,
        regroup_fraction: float = 0.1,
        call_cost_s: float = 0.0,
        ahead: Sequence[tuple[AssembleFn, ExecuteFn]] | None = None,
    ):
        self.name = name
        self.regroup_s = regroup_s
        self.regroup_fraction = regroup_fraction
        self.call_cost_s = call_cost_s
        self._gap_s = 0.0  # moving average of the gaps between arrivals
        self._last_gap_s = float("inf")  # the gap before the latest arrival
        self._last_arrival = 0.0
        self._last_batch = 0  # size of the last batch while the load continues; 0: idle
        self._last_compute_s = 0.0
        self._last_end = 0.0  # when the last batch finished (time.monotonic)
        self.exact_sizes = sorted(exact_sizes) if exact_sizes else None
        self._run_fns: list[RunFn] = list(run_fn) if isinstance(run_fn, Sequence) else [run_fn]
        if not self._run_fns:
            raise ValueError("a batcher needs at least one run function")
        self.instances = len(self._run_fns)
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._metrics = metrics
        self._queue: collections.deque[_Item] = collections.deque()
        self._wakeup = asyncio.Event()
        self._executors = [
            ThreadPoolExecutor(
                1,
                thread_name_prefix=f"runner-{name}-{i}",
                initializer=name_thread,
                initargs=(f"runner-{i}",),
            )
            for i in range(self.instances)
        ]
        if ahead is not None and len(ahead) != self.instances:
            raise ValueError("ahead needs one (assemble, execute) pair per instance")
        self._ahead_fns = list(ahead) if ahead else None
        self._assembler = (
            ThreadPoolExecutor(
                1,
                thread_name_prefix=f"assemble-{name}",
                initializer=name_thread,
                initargs=("assemble",),
            )
            if ahead
            else None
        )
        # instance -> (its next batch, the future of that batch's assembly)
        self._ahead: dict[int, tuple[list[_Item], asyncio.Future]] = {}
        # busy instance -> (when its batch started, its size)
        self._running: dict[int, tuple[float, int]] = {}
        self._assembly_inline = metrics.batch_assembly_seconds.labels("inline")
        self._assembly_ahead = metrics.batch_assembly_seconds.labels("ahead")
        self._depth = metrics.queue_depth.labels(name)
        self._stage_seconds = metrics.stage_seconds.labels(name)
        self._free = list(range(self.instances))[::-1]  # idle instances; pop() takes the 1st
        self._batches: set[asyncio.Task] = set()  # batches executing now
        self._task: asyncio.Task | None = None
        self._busy = metrics.stage_busy_window(name, self.instances)
        metrics.model_instances.labels(name).set(self.instances)
        self.running_items = 0  # items in batches executing now, over all instances

    def __len__(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._loop(), name=f"batcher-{self.name}"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for task in list(self._batches):
            task.cancel()
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)
        stopped = ShuttingDown("the service is shutting down")
        for batch, assembly in self._ahead.values():
            await asyncio.gather(assembly, return_exceptions=True)  # it may read the items
            self._fail(batch, stopped)
        self._ahead.clear()
        self._fail(self._queue, stopped)
        self._queue.clear()
        for executor in self._executors:
            executor.shutdown(wait=True)
        if self._assembler is not None:
            self._assembler.shutdown(wait=True)

    def submit(self, payload: np.ndarray, deadline: float) -> asyncio.Future:
        """Queue one item; the future resolves to ``(output_row, BatchInfo)``. Raises
        ``QueueFull`` when the queue is at its bound."""
        if len(self._queue) >= self.max_queue:
            raise self._full()
        future = asyncio.get_running_loop().create_future()
        self.submit_many([(payload, deadline, FutureReply(future))])
        return future

    def submit_many(self, entries: Iterable[tuple[np.ndarray, float, Reply]]) -> None:
        """Queue items that arrived together, with one wake-up: each ``(payload, deadline,
        reply)``. Those past the queue's bound are answered ``QueueFull`` at once."""
        now = time.monotonic()
        queue, before = self._queue, len(self._queue)
        for payload, deadline, reply in entries:
            if len(queue) >= self.max_queue:
                reply.set_exception(self._full())
            else:
                queue.append(_Item(payload, reply, deadline, now))
        added = len(queue) - before
        if not added:
            return
        if self._last_arrival:
            # Items of one message arrived together: the gap per item is the gap / their count.
            self._last_gap_s = gap = (now - self._last_arrival) / added
            self._gap_s = gap if not self._gap_s else 0.8 * self._gap_s + 0.2 * gap
        self._last_arrival = now
        self._depth.set(len(queue))
        self._wakeup.set()

    def _full(self) -> QueueFull:
        return QueueFull(
            f"the service is at capacity (the {self.name} queue is full, {self.max_queue} "
            "items); retry"
        )

    @staticmethod
    def _fail(items: Iterable[_Item], error: BaseException) -> None:
        for item in items:
            if not item.reply.done():
                item.reply.set_exception(error)

    def _drop_dead(self) -> None:
        """Remove items whose request gave up or whose deadline passed: never run them."""
        now = time.monotonic()
        live: collections.deque[_Item] = collections.deque()
        expired = 0
        for item in self._queue:
            if item.reply.done():
                # Cancelled by its request when the request's deadline passed (the pipeline's
                # timeout cancels what it still waits for): dropped before the model too.
                expired += 1
                item.reply.set_exception(_GIVEN_UP)
            elif item.deadline <= now:
                expired += 1
                item.reply.set_exception(
                    DeadlineExceeded("the request did not finish before its deadline")
                )
            else:
                live.append(item)
        if expired:
            self._metrics.expired.inc(expired)
            self._queue = live

    def _batch_size(self) -> int:
        """How many queued items the next batch takes.

        With ``exact_sizes``: the largest size the queue fills, unless the queue nearly fills
        the next size up (at most 1/8 of it would be padding: 15 runs as 16, not as 8 + 7).
        """
        size = min(len(self._queue), self.max_batch_size, self._share())
        if not self.exact_sizes or size < self.exact_sizes[0]:
            return size
        up = next((b for b in self.exact_sizes if b >= size), size)
        if (up - size) * 8 <= up:
            return size
        return max(b for b in self.exact_sizes if b <= size)

    def _share(self) -> int:
        """An instance's share of the work in the stage (queued and running items): with
        several instances, one batch must not take what the idle others could run beside it."""
        if self.instances == 1:
            return self.max_batch_size
        return -(-(len(self._queue) + self.running_items) // self.instances)

    def _take_batch(self) -> list[_Item]:
        self._drop_dead()
        batch = [self._queue.popleft() for _ in range(self._batch_size())]
        self._depth.set(len(self._queue))
        return batch

    async def _hold_partial(self) -> None:
        """With ``max_delay_s`` > 0, wait for a full batch or the oldest item's delay."""
        while len(self._queue) < self.max_batch_size:
            remaining = self._queue[0].enqueued + self.max_delay_s - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _regroup_budget(self) -> float:
        return min(self.regroup_s, self.regroup_fraction * self._last_compute_s)

    async def _wait_for_items(self, count: int, seconds: float) -> bool:
        """Wait until ``count`` items are queued or ``seconds`` pass; True if they are."""
        deadline = time.monotonic() + seconds
        while len(self._queue) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return len(self._queue) >= count
        return True

    async def _regroup(self) -> None:
        """Under load, let the next batch reach the last one's size plus what was already
        queued when it finished. Items queued since are the last batch's clients coming back:
        counting them twice would make the batch wait for one more item than will come, so
        every batch would wait out the whole budget."""
        earlier = 0
        for item in self._queue:  # in arrival order
            if item.enqueued >= self._last_end:
                break
            earlier += 1
        want = min(self.max_batch_size, self._last_batch + earlier)
        if self._last_batch <= 1 or len(self._queue) >= want:
            return
        await self._wait_for_items(want, self._regroup_budget())

    async def _coalesce(self) -> None:
        """Items arriving faster than one execution's fixed cost: hold a short queue for at
        most that cost, for the items due meanwhile. A fast model under a high arrival rate
        otherwise runs every item alone, idle between items, and pays the fixed cost (the
        framework's call, the transfer to the device) once per image, on a host CPU that the
        front ends need. The wait never exceeds what the batch saves; an item after a pause
        (a gap longer than twice the cost) runs at once."""
        cost = min(self.call_cost_s, self.regroup_s)
        if cost <= 0 or not self._gap_s or self._last_gap_s > 2 * cost:
            return
        due = int(cost / self._gap_s)
        if due < 1:
            return
        await self._wait_for_items(min(self.max_batch_size, len(self._queue) + due), cost)

    async def _loop(self) -> None:
        while True:
            if not self._free:  # every instance is executing: wait for one to finish
                self._assemble_ahead()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            ahead = next((i for i in self._free if i in self._ahead), None)
            if ahead is not None:  # its next batch is assembled: start it at once
                self._free.remove(ahead)
                batch, assembly = self._ahead.pop(ahead)
                self._dispatch(ahead, batch, assembly)
                continue
            if not self._queue:
                budget = self._regroup_budget() if self._last_batch else 0.0
                if budget <= 0 or not await self._wait_for_items(1, budget):
                    if not self._batches:
                        self._last_batch = 0  # the load is gone: a lone item runs at once
                    self._wakeup.clear()
                    await self._wakeup.wait()
                continue
            if self.max_delay_s > 0:
                await self._hold_partial()
            elif self.regroup_s > 0:
                await self._regroup()
                await self._coalesce()
            if not self._free:
                continue
            batch = self._take_batch()
            if not batch:
                continue
            self._dispatch(self._free.pop(), batch, None)

    def _dispatch(self, instance: int, batch: list[_Item], assembly: asyncio.Future | None) -> None:
        self.running_items += len(batch)
        self._running[instance] = (time.monotonic(), len(batch))
        task = asyncio.get_running_loop().create_task(
            self._execute(instance, batch, assembly), name=f"batch-{self.name}-{instance}"
        )
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    def _assemble_ahead(self) -> None:
        """Every instance is busy: if at least as many items are queued as the batch running
        on the instance that started first (the load is steady), take them for its next
        batch and assemble it now, in the assembly thread (on a GPU: the copy into the other
        input buffer and the transfer to the device), so that the instance starts it the
        moment it is done instead of waiting for host work."""
        if self._ahead_fns is None or not self._queue:
            return
        waiting = [i for i in self._running if i not in self._ahead]
        if not waiting:
            return
        instance = min(waiting, key=lambda i: self._running[i][0])
        want = min(self.max_batch_size, self._running[instance][1])
        if len(self._queue) < want:
            return
        self._drop_dead()
        size = min(len(self._queue), self.max_batch_size)
        if size < want:
            return
        batch = [self._queue.popleft() for _ in range(size)]
        self._depth.set(len(self._queue))
        assemble = self._ahead_fns[instance][0]
        assembly = asyncio.get_running_loop().run_in_executor(
            self._assembler, _timed, assemble, [item.payload for item in batch]
        )
        self._ahead[instance] = (batch, assembly)

    async def _execute(
        self, instance: int, batch: list[_Item], assembly: asyncio.Future | None
    ) -> None:
        """Run one batch on one instance and answer its items."""
        loop = asyncio.get_running_loop()
        m = self._metrics
        started = time.monotonic()
        token = self._busy.begin()
        try:
            if assembly is None:  # assembled by the runner itself, which waits for it
                result = await loop.run_in_executor(
                    self._executors[instance],
                    self._run_fns[instance],
                    [item.payload for item in batch],
                )
                assembly_s = result[3] if len(result) > 3 else 0.0
                self._assembly_inline.inc(assembly_s)
            else:
                prepared, assembly_s = await assembly
                self._assembly_ahead.inc(assembly_s)
                assert self._ahead_fns is not None
                result = await loop.run_in_executor(
                    self._executors[instance], self._ahead_fns[instance][1], prepared
                )
            outputs, padded, compute_s = result[:3]
        except asyncio.CancelledError:
            self._fail(batch, ShuttingDown("the service is shutting down"))
            raise
        except Exception:  # the model failed: fail this batch only, keep serving
            error_id = uuid.uuid4().hex[:12]  # in the log line and in every answer
            log.exception("%s: batch of %d failed, error id %s", self.name, len(batch), error_id)
            self._fail(
                batch,
                ModelError(
                    f"the model failed on this batch; error id {error_id}", error_id=error_id
                ),
            )
            return
        finally:
            self._busy.end(token)
            self.running_items -= len(batch)
            self._running.pop(instance, None)
            self._free.append(instance)
            self._wakeup.set()
        self._last_end = time.monotonic()
        n = len(batch)
        self._last_batch, self._last_compute_s = n, compute_s
        m.runner_busy_seconds.inc(compute_s)
        m.execution_count.inc()
        m.inference_count.inc(n)
        m.batch_size.observe(n)
        m.padded_slots.inc(padded - n)
        m.inference_duration.observe(compute_s)
        self._stage_seconds.observe(compute_s)
        observe_queue = m.queue_duration.observe
        for i, item in enumerate(batch):
            queue_s = started - item.enqueued
            observe_queue(queue_s)
            item.reply.set_result((outputs[i], BatchInfo(queue_s, compute_s, n, padded)))


def name_thread(name: str) -> None:
    """Name this thread for the system too (top -H, py-spy, /proc/PID/task/*/comm)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(15, name[:15].encode(), 0, 0, 0)  # PR_SET_NAME


def _timed(fn: AssembleFn, payloads: list[np.ndarray]) -> tuple[Any, float]:
    started = time.perf_counter()
    return fn(payloads), time.perf_counter() - started


class FutureReply:
    """An ``asyncio.Future`` as a :class:`Reply` that may be answered after it was cancelled."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future):
        self.future = future

    def done(self) -> bool:
        return self.future.done()

    def set_result(self, result: tuple[np.ndarray, BatchInfo]) -> None:
        if not self.future.done():
            self.future.set_result(result)

    def set_exception(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)
