"""The dynamic batcher: gathers items from all concurrent requests into batches for one runner.

When a batch starts and how many items it takes is the policy of ``batch_policy.py`` (it costs
nothing at low load and fills batches under load: a lone item runs at once, a busy runner's
queue becomes its next batch, with regrouping, coalescing and an optional delay). This module
is the machinery:

* Items whose deadline has passed, or whose request gave up, are dropped before the model.
* Instances (Triton's instance group): given several run functions, the batcher keeps each busy
  with its own batch, dispatching to whichever is free. A batch then takes at most its share of
  the work in the stage (queued plus running, divided by the instances; under load at least the
  last batch's size), so the load splits into batches that run side by side and finish at
  different times: while one instance computes, the clients of another's last batch send their
  next images, and the cores never wait for both.
  With one instance this rule never limits a batch.
* Ahead of time (``ahead``, on accelerators): when every instance is busy and at least as many
  items are queued as the batch running (the load is steady), they are taken now for the next
  batch and assembled (copied into a free input buffer of the instance and, on an accelerator,
  sent to the device) in an assembly thread, so that the instance starts it the moment it
  finishes the one it runs: it never waits for host work between batches under load.
  ``serve_batch_assembly_seconds_total{when}`` says how much assembly ran ahead and how much
  the runner waited for (``inline``).

Items come in bulk (:meth:`DynamicBatcher.submit_many`: all the items of one message of a
front end, with one wake-up) and each carries a *reply*: an ``asyncio.Future`` for callers in
this process (:meth:`DynamicBatcher.submit`), or the accelerator process's ticket, which
collects the answers of one batch into one message per front end. The batcher runs on the
event loop; each instance's ``run`` executes in its own dedicated thread (the backends release
the GIL), so postprocessing happens where the replies go, off the runner.

A batch cheaper than ``inline_s`` (``SERVE_INLINE_BATCH_MS``: the last batch of its size paused
the loop no longer) with less than a full batch queued behind it runs on the event loop itself:
for a model that costs tens of microseconds, the hand-off to the thread and back and the two
threads' contention for the GIL cost more than the call. The first batch of a size, any that
ran slower or failed, and any with a backlog (a full batch waiting) behind it go to the thread:
a real model's batches, their overlap with the next batch's assembly on a GPU, and batches side
by side on several instances while the loop takes in the next items stay there.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import tracing
from ..errors import DeadlineExceeded, ModelError, QueueFull, ShuttingDown
from ..metrics import Metrics
from ..pipeline.info import BatchInfo
from .batch_policy import BatchPolicy
from .replies import GIVEN_UP, FutureReply, Reply
from .runner_thread import RunnerThread
from .wakeup import Wakeup

log = logging.getLogger(__name__)

# A batch's items -> (outputs, padded size, compute seconds[, assembly seconds]).
RunFn = Callable[[list[np.ndarray]], tuple]
# Assembling ahead: items -> prepared batch (in the assembly thread); prepared -> as RunFn.
AssembleFn = Callable[[list[np.ndarray]], Any]
ExecuteFn = Callable[[Any], tuple]


@dataclass(slots=True)
class _Item:
    payload: np.ndarray
    reply: Reply
    deadline: float
    enqueued: float


class DynamicBatcher(BatchPolicy):
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
        inline_s: a batch whose size last ran in at most this long (the loop's pause:
            assembly and call), with nothing queued behind it, runs on the event loop instead
            of its instance's thread (0: always the thread). The first batch of each size runs
            in the thread.
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
        inline_s: float = 0.0,
    ):
        self.name = name
        self.inline_s = inline_s
        self._pause_s: dict[int, float] = {}  # batch size -> its last run's pause of the loop
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
        self._wakeup = Wakeup()
        self._runners = [
            RunnerThread(f"runner-{name}-{i}", f"runner-{i}") for i in range(self.instances)
        ]
        if ahead is not None and len(ahead) != self.instances:
            raise ValueError("ahead needs one (assemble, execute) pair per instance")
        self._ahead_fns = list(ahead) if ahead else None
        self._assembler = RunnerThread(f"assemble-{name}", "assemble") if ahead else None
        # instance -> (its next batch, the future of that batch's assembly)
        self._ahead: dict[int, tuple[list[_Item], asyncio.Future]] = {}
        # busy instance -> (when its batch started, its size)
        self._running: dict[int, tuple[float, int]] = {}
        self._assembly_inline = metrics.batch_assembly_seconds.labels("inline")
        self._assembly_ahead = metrics.batch_assembly_seconds.labels("ahead")
        self._depth = metrics.queue_depth.labels(name)
        self._stage_seconds = metrics.stage_seconds.labels(name)
        self._tally = metrics.tally  # the process's, for the per-batch metric writes
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
        for runner in self._runners:
            runner.close()
        if self._assembler is not None:
            self._assembler.close()
        self._tally.flush()

    def submit(
        self, payload: np.ndarray, deadline: float, trace: str | None = None
    ) -> asyncio.Future:
        """Queue one item; the future resolves to ``(output_row, BatchInfo)``. Raises
        ``QueueFull`` when the queue is at its bound. ``trace``: the item's traceparent."""
        if len(self._queue) >= self.max_queue:
            raise self._full()
        future = asyncio.get_running_loop().create_future()
        self.submit_many([(payload, deadline, FutureReply(future, trace))])
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
        self._tally.set(self._depth, len(queue))
        self._wakeup.set()

    def _full(self) -> QueueFull:
        return QueueFull(
            f"the service is at capacity (the {self.name} queue is full, {self.max_queue} "
            "items); retry"
        )

    @staticmethod
    def _fail(items: Iterable[_Item], error: BaseException) -> None:
        # Done ones too: a reply ignores a second answer, and a cancelled ticket learns from
        # this one that its item's slot is free again (replies.Reply).
        for item in items:
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
                item.reply.set_exception(GIVEN_UP)
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

    def _take_batch(self) -> list[_Item]:
        self._drop_dead()
        batch = [self._queue.popleft() for _ in range(self._batch_size())]
        self._tally.set(self._depth, len(self._queue))
        return batch

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
                self._dispatch(ahead, *self._ahead.pop(ahead))
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
            if not self._free or any(i in self._ahead for i in self._free):
                # An instance freed during the wait has its next batch assembled: that batch
                # starts first, and on that instance only (another batch would be assembled
                # into the buffer it waits in).
                continue
            batch = self._take_batch()
            if batch:
                self._dispatch(self._free.pop(), batch, None)
            # This loop waits between batches: it must not hold the last one's items, views
            # of a front end's shared memory that is unmapped only once none is left.
            del batch

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
        self._tally.set(self._depth, len(self._queue))
        assemble = self._ahead_fns[instance][0]
        assert self._assembler is not None
        assembly = self._assembler.submit(_timed, assemble, [item.payload for item in batch])
        self._ahead[instance] = (batch, assembly)

    async def _execute(
        self, instance: int, batch: list[_Item], assembly: asyncio.Future | None
    ) -> None:
        """Run one batch on one instance and answer its items."""
        m, tally = self._metrics, self._tally
        started = time.monotonic()
        started_ns = time.time_ns() if tracing.ENABLED else 0
        token = self._busy.begin()
        n = len(batch)
        # On this loop: this size ran within inline_s last time, and less than a full batch is
        # queued behind it. A full batch waiting is a backlog: the threads then run batches side
        # by side while the loop takes in the next items, which measured cheaper than the
        # hand-off they cost (make bench-engine, batches of 32). The few items that arrive while
        # a batch is dispatched are not one: sending those batches to the thread cost the
        # process a fifth more CPU per image under bench-serving's load.
        here = (
            self.inline_s > 0
            and len(self._queue) < self.max_batch_size
            and self._pause_s.get(n, math.inf) <= self.inline_s
        )
        try:
            if assembly is None:  # assembled by the runner itself, which waits for it
                run, payloads = self._run_fns[instance], [item.payload for item in batch]
                if here:
                    result = run(payloads)
                else:
                    result = await self._runners[instance].submit(run, payloads)
                assembly_s = result[3] if len(result) > 3 else 0.0
                tally.inc(self._assembly_inline, assembly_s)
            else:
                prepared, ahead_s = await assembly
                tally.inc(self._assembly_ahead, ahead_s)
                assembly_s = 0.0  # the assembly thread's, never part of this loop's pause
                assert self._ahead_fns is not None
                execute = self._ahead_fns[instance][1]
                if here:
                    result = execute(prepared)
                else:
                    result = await self._runners[instance].submit(execute, prepared)
            outputs, padded, compute_s = result[:3]
            if len(outputs) != n:
                raise RuntimeError(f"{len(outputs)} outputs for a batch of {n}")
        except asyncio.CancelledError:
            self._fail(batch, ShuttingDown("the service is shutting down"))
            raise
        except Exception:  # the model failed: fail this batch only, keep serving
            self._pause_s.pop(n, None)  # its next batch of this size in the thread again
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
        self._pause_s[n] = assembly_s + compute_s
        self._last_batch, self._last_compute_s = n, compute_s
        tally.inc(m.runner_busy_seconds, compute_s)
        tally.inc(m.execution_count)
        tally.inc(m.inference_count, n)
        tally.observe(m.batch_size, n)
        tally.inc(m.padded_slots, padded - n)
        tally.observe(m.inference_duration, compute_s)
        tally.observe(self._stage_seconds, compute_s)
        if tracing.ENABLED:
            tracing.batch_span(
                [item.reply.trace for item in batch],
                self.name.partition("/")[0] if "/" in self.name else "default",
                self.name,
                n,
                padded,
                started_ns,
                started_ns + int((time.monotonic() - started) * 1e9),
            )
        waited = [started - item.enqueued for item in batch]
        tally.observe_many(m.queue_duration, waited)
        for item, row, queue_s in zip(batch, outputs, waited, strict=True):  # lengths checked
            item.reply.set_result((row, BatchInfo(queue_s, compute_s, n, padded)))


def _timed(fn: AssembleFn, payloads: list[np.ndarray]) -> tuple[Any, float]:
    started = time.perf_counter()
    return fn(payloads), time.perf_counter() - started
