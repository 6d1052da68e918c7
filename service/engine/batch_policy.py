"""When the next batch starts and how many items it takes: the dynamic batcher's policy.

It costs nothing at low load and fills batches under load:

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

With several instances a batch takes at most its share of the work in the stage (``_share``),
or under load as many as the last batch.
The batcher (``batcher.py``) calls these between batches; they read its queue and its record
of the last batch.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from .wakeup import Wakeup


class BatchPolicy:
    """The batch-forming half of :class:`~.batcher.DynamicBatcher` (which sets these)."""

    _queue: collections.deque[Any]
    _wakeup: Wakeup
    max_batch_size: int
    max_delay_s: float
    exact_sizes: list[int] | None
    instances: int
    running_items: int
    regroup_s: float
    regroup_fraction: float
    call_cost_s: float
    _gap_s: float
    _last_gap_s: float
    _last_batch: int
    _last_compute_s: float
    _last_end: float

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
        several instances, one batch must not take what the idle others could run beside it.

        Under load a batch may still take as many items as the last batch: those are most
        likely one batch's clients come back together, and splitting them over two free
        instances puts the instances in step, after which they alternate a full and a part
        batch (a quarter less work per round for sixteen closed-loop clients on two)."""
        if self.instances == 1:
            return self.max_batch_size
        share = -(-(len(self._queue) + self.running_items) // self.instances)
        return max(share, self._last_batch)

    async def _hold_partial(self) -> None:
        """With ``max_delay_s`` > 0, wait for a full batch or the oldest item's delay."""
        while len(self._queue) < self.max_batch_size:
            remaining = self._queue[0].enqueued + self.max_delay_s - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            if not await self._wakeup.wait(remaining):
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
            if not await self._wakeup.wait(remaining):
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
