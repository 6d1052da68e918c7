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

The batcher runs on the event loop; each instance's ``run`` executes in its own dedicated thread
(TensorFlow releases the GIL), and results are handed back through futures, so postprocessing
happens in the requests' own coroutines, off the runner.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import DeadlineExceeded, ModelError, Overloaded, ShuttingDown
from ..metrics import Metrics
from .info import BatchInfo

log = logging.getLogger(__name__)

RunFn = Callable[[list[np.ndarray]], tuple[np.ndarray, int, float]]


class QueueFull(Overloaded):
    """The batcher's queue is at its bound."""


@dataclass
class _Item:
    payload: np.ndarray
    future: asyncio.Future
    deadline: float
    enqueued: float = field(default_factory=time.monotonic)


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
            ThreadPoolExecutor(1, thread_name_prefix=f"runner-{name}-{i}")
            for i in range(self.instances)
        ]
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
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(ShuttingDown("the service is shutting down"))
        for executor in self._executors:
            executor.shutdown(wait=True)

    def submit(self, payload: np.ndarray, deadline: float) -> asyncio.Future:
        """Queue one item; the future resolves to ``(output_row, BatchInfo)``."""
        if len(self._queue) >= self.max_queue:
            raise QueueFull(
                f"the service is at capacity (the {self.name} queue is full, {self.max_queue} "
                "items); retry"
            )
        future = asyncio.get_running_loop().create_future()
        now = time.monotonic()
        if self._last_arrival:
            self._last_gap_s = gap = now - self._last_arrival
            self._gap_s = gap if not self._gap_s else 0.8 * self._gap_s + 0.2 * gap
        self._last_arrival = now
        self._queue.append(_Item(payload, future, deadline, now))
        self._metrics.queue_depth.labels(self.name).set(len(self._queue))
        self._wakeup.set()
        return future

    def _drop_dead(self) -> None:
        """Remove items whose request gave up or whose deadline passed: never run them."""
        now = time.monotonic()
        live: collections.deque[_Item] = collections.deque()
        for item in self._queue:
            if item.future.done():
                # Cancelled by its request when the request's deadline passed (the pipeline's
                # timeout cancels what it still waits for): dropped before the model too.
                self._metrics.expired.inc()
            elif item.deadline <= now:
                self._metrics.expired.inc()
                item.future.set_exception(
                    DeadlineExceeded("the request did not finish before its deadline")
                )
            else:
                live.append(item)
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
        self._metrics.queue_depth.labels(self.name).set(len(self._queue))
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
                self._wakeup.clear()
                await self._wakeup.wait()
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
            instance = self._free.pop()
            self.running_items += len(batch)
            task = asyncio.get_running_loop().create_task(
                self._execute(instance, batch), name=f"batch-{self.name}-{instance}"
            )
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _execute(self, instance: int, batch: list[_Item]) -> None:
        """Run one batch on one instance and resolve its items' futures."""
        loop = asyncio.get_running_loop()
        m = self._metrics
        started = time.monotonic()
        payloads = [item.payload for item in batch]
        token = self._busy.begin()
        try:
            outputs, padded, compute_s = await loop.run_in_executor(
                self._executors[instance], self._run_fns[instance], payloads
            )
        except asyncio.CancelledError:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(ShuttingDown("the service is shutting down"))
            raise
        except Exception:  # the model failed: fail this batch only, keep serving
            error_id = uuid.uuid4().hex[:12]  # in the log line and in every answer
            log.exception("%s: batch of %d failed, error id %s", self.name, len(batch), error_id)
            error = ModelError(
                f"the model failed on this batch; error id {error_id}",
                error_id=error_id,
            )
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        finally:
            self._busy.end(token)
            self.running_items -= len(batch)
            self._free.append(instance)
            self._wakeup.set()
        self._last_end = time.monotonic()
        elapsed = self._last_end - started
        self._last_batch, self._last_compute_s = len(batch), compute_s
        m.runner_busy_seconds.inc(elapsed)
        m.execution_count.inc()
        m.inference_count.inc(len(batch))
        m.batch_size.observe(len(batch))
        m.padded_slots.inc(padded - len(batch))
        m.inference_duration.observe(compute_s)
        m.stage_seconds.labels(self.name).observe(compute_s)
        for i, item in enumerate(batch):
            queue_s = started - item.enqueued
            m.queue_duration.observe(queue_s)
            if not item.future.done():
                item.future.set_result(
                    (outputs[i], BatchInfo(queue_s, compute_s, len(batch), padded))
                )
