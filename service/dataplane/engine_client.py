"""A front end's way to the accelerator process: the dataplane's engine, over the channel.

Each item goes into a slot of this front end's shared-memory arena; the items made ready in one
event-loop turn cross the socket together in one ``Submit`` (``wire/messages.py``), and each
batch's rows come back in their slots with one ``Done``. Until the accelerator process has
answered ``Hello`` with ``Welcome`` (it is starting, or restarting after a crash), every
pipeline reads as ``loading`` and items are refused with 503 ``engine_unavailable`` at once; the
client keeps reconnecting, and items in flight when the connection drops fail the same way. A
``Refused`` (the two processes come from different builds) turns every pipeline ``failed``;
one for this front end's arena alone (the accelerator process could not attach it) makes it
replace the arena and connect again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
from functools import partial
from pathlib import Path

import numpy as np

from .. import tracing
from ..errors import EngineUnavailable, PipelineNotFound, ShuttingDown
from ..pipeline.config import load_pipelines
from ..pipeline.info import BatchInfo, PipelineInfo, configured_info
from ..settings import Settings
from ..wire import messages as m
from ..wire.arena import Arena
from ..wire.channel import Channel, msgpack_codec

log = logging.getLogger(__name__)

RECONNECT_S = 0.2
# Connections lost before ``Welcome`` are retried after RECONNECT_S, doubled each time up to this.
RECONNECT_MAX_S = 5.0
# A scrape waits this long at most for the accelerator process to write its metrics.
FLUSH_METRICS_TIMEOUT_S = 1.0
UNREACHABLE = "the accelerator process is not reachable (restarting); retry"


class EngineClient:
    """The accelerator process, as the dataplane sees it (``dataplane.Engine``).

    Args:
        settings: the pipelines (their names and configuration are known before the engine
            answers) and the fallback pipeline.
        socket_path: the accelerator process's socket.
        index: this front end's number (in the engine's log).
        slots: items that may travel through shared memory at once.
        slot_bytes: the largest item or row a slot holds.
    """

    def __init__(
        self,
        settings: Settings,
        socket_path: str | Path,
        index: int = 0,
        slots: int = 64,
        slot_bytes: int = 224 * 224 * 3,
    ):
        self.fallback = settings.pipeline
        self.socket_path = str(socket_path)
        self.index = index
        self._configured = {
            name: dataclasses.replace(configured_info(settings, spec), state="loading")
            for name, spec in load_pipelines(settings.pipelines_file).items()
        }
        self._infos = dict(self._configured)
        self._slots, self._slot_bytes = slots, slot_bytes
        self.arena: Arena | None = None
        self._channel: Channel | None = None
        self._connected = asyncio.Event()
        self._pending: dict[int, tuple[asyncio.Future, int]] = {}  # id -> (future, its slot)
        self._submit: list[m.Item] = []  # made ready in this event-loop turn
        self._cancel: list[int] = []
        self._flushing = False
        self._refused: str | None = None
        self._stale_arena = False  # the accelerator process could not attach it: replace it
        self._ids = itertools.count()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._flushes: dict[int, asyncio.Future] = {}  # FlushMetrics sent, by token

    # -- what the dataplane asks -----------------------------------------------------------

    def names(self) -> list[str]:
        return list(self._configured)

    def info(self, name: str) -> PipelineInfo:
        return PipelineNotFound.lookup(self._infos, name)

    async def run(
        self, name: str, item: np.ndarray, deadline: float
    ) -> tuple[np.ndarray, BatchInfo]:
        """One item through the pipeline's stages in the accelerator process. It leaves with
        every other item made ready in the same event-loop turn, in one message."""
        channel = self._channel
        if channel is None or channel.closed:
            raise EngineUnavailable(self._refused or UNREACHABLE)
        arena = self.arena
        slot = arena.take() if arena is not None and arena.fits(item) else -1
        data = None
        if slot >= 0:
            assert arena is not None
            arena.write(slot, item)
        else:
            data = np.ascontiguousarray(item).tobytes()
        rid = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[rid] = (future, slot)
        self._submit.append(
            m.Item(
                rid, name, slot, item.shape, item.dtype.str, deadline, data, tracing.traceparent()
            )
        )
        self._schedule()
        try:
            return await future
        except asyncio.CancelledError:
            # The slot stays taken until the engine answers: it may be reading the item now.
            self._cancel.append(rid)
            self._schedule()
            raise

    async def flush_metrics(self, timeout: float = FLUSH_METRICS_TIMEOUT_S) -> bool:
        """Have the accelerator process write what it has counted and not yet written (before
        a scrape reads the metrics files). False when it did not answer in ``timeout`` (not
        connected, busy or restarting): the scrape then reads what was written so far, at most
        ``Tally.interval_s`` old."""
        channel = self._channel
        if channel is None or channel.closed or not self._connected.is_set():
            return False
        token = next(self._ids)
        future = self._flushes[token] = asyncio.get_running_loop().create_future()
        channel.send(m.FlushMetrics(token))
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except (TimeoutError, EngineUnavailable):
            return False
        finally:
            self._flushes.pop(token, None)

    def _schedule(self) -> None:
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        channel = self._channel
        submit, self._submit = self._submit, []
        cancel, self._cancel = self._cancel, []
        if channel is None:  # gone since: _disconnected has failed those items
            return
        if submit:
            channel.send(m.Submit(submit))
        if cancel:
            channel.send(m.Cancel(cancel))

    def _on_message(
        self, message: m.Welcome | m.Refused | m.Infos | m.Done | m.Failed | m.MetricsFlushed
    ) -> None:
        if isinstance(message, m.Done):
            self._done(message)
        elif isinstance(message, m.MetricsFlushed):
            flushed = self._flushes.get(message.token)
            if flushed is not None and not flushed.done():
                flushed.set_result(None)
        elif isinstance(message, m.Failed):
            for rid in message.ids:
                future, slot = self._pending.pop(rid)
                if not future.done():
                    error = message.error
                    future.set_exception(
                        error.rebuild() if error else ShuttingDown("the item was cancelled")
                    )
                self._free(slot)
        elif isinstance(message, m.Infos):
            self._infos.update(message.infos)
        elif isinstance(message, m.Welcome):
            if message.version != m.VERSION:
                self._refuse(
                    f"the accelerator process speaks version {message.version} of the "
                    f"messages, this front end {m.VERSION}: they come from different builds"
                )
                return
            self._infos.update(message.infos)
            self._connected.set()
        elif isinstance(message, m.Refused):
            if message.arena:  # replaced once the connection is down (_keep_connected)
                log.error("the accelerator process could not attach the arena: %s", message.reason)
                self._stale_arena = True
            else:
                self._refuse(message.reason)

    def _done(self, done: m.Done) -> None:
        arena = self.arena
        shape, dtype = done.shape, np.dtype(done.dtype)
        row_bytes = math.prod(shape) * dtype.itemsize
        inline = 0
        for rid, slot, queue_s in zip(done.ids, done.slots, done.queue_s, strict=True):
            future, taken = self._pending.pop(rid)
            if not future.done():
                if slot >= 0:
                    assert arena is not None
                    row = arena.view(slot, shape, done.dtype).copy()
                else:
                    assert done.data is not None
                    count = row_bytes // dtype.itemsize
                    row = np.frombuffer(done.data, dtype, count, inline).reshape(shape)
                batch = BatchInfo(queue_s, done.compute_s, done.batch_size, done.padded_size)
                future.set_result((row, batch))
            if slot < 0:
                inline += row_bytes
            self._free(taken)

    def _refuse(self, reason: str) -> None:
        """The two processes cannot talk (different builds): say so everywhere, stop trying."""
        log.critical("the accelerator process refused this front end: %s", reason)
        self._refused = reason
        self._stopping = True
        self._infos = {
            name: dataclasses.replace(info, state="failed", error=reason)
            for name, info in self._configured.items()
        }
        if self._channel is not None:
            self._channel.close()

    def _free(self, slot: int) -> None:
        if slot >= 0 and self.arena is not None:
            self.arena.give(slot)

    # -- the connection --------------------------------------------------------------------

    async def start(self) -> None:
        """Create the arena and keep a connection to the accelerator process (in a task)."""
        self.arena = Arena.create(self._slots, self._slot_bytes)
        self._task = asyncio.create_task(self._keep_connected(), name="engine-client")

    async def _keep_connected(self) -> None:
        loop = asyncio.get_running_loop()
        codec = msgpack_codec(m.ToFrontEnd)
        pause = RECONNECT_S
        while not self._stopping:
            lost: asyncio.Future = loop.create_future()
            try:
                _, channel = await loop.create_unix_connection(
                    partial(Channel, self._on_message, partial(_set, lost), codec),
                    self.socket_path,
                )
            except OSError:
                await asyncio.sleep(RECONNECT_S)
                continue
            assert isinstance(channel, Channel)
            arena = self.arena
            channel.send(
                m.Hello(
                    m.VERSION,
                    self.index,
                    arena.name if arena else None,
                    arena.slots if arena else 0,
                    arena.slot_bytes if arena else 0,
                )
            )
            self._channel = channel
            await lost
            welcomed = self._connected.is_set()
            self._disconnected()
            if self._stale_arena:
                self._replace_arena()
            if self._stopping:
                break
            # A pause after every loss, longer each time the connection does not get as far as
            # Welcome: an accelerator process that accepts and drops it must not be hammered.
            if welcomed:
                pause = RECONNECT_S
            elif pause == RECONNECT_S:
                log.warning(
                    "the accelerator process closed the connection without answering hello; "
                    "retrying after a growing pause (up to %g s)",
                    RECONNECT_MAX_S,
                )
            await asyncio.sleep(pause)
            if not welcomed:
                pause = min(pause * 2, RECONNECT_MAX_S)

    def _replace_arena(self) -> None:
        """A new arena for the next connection. Nothing is in flight (``_disconnected`` has
        failed it all), so every slot of the old one is free."""
        self._stale_arena = False
        old = self.arena
        if old is not None and not old.close():
            log.warning("the old arena %s is still read here; it goes with its last view", old.name)
        self.arena = Arena.create(self._slots, self._slot_bytes)

    def _disconnected(self) -> None:
        self._channel = None
        was_connected = self._connected.is_set()
        self._connected.clear()
        if not self._stopping and (was_connected or self._pending):
            log.error(
                "the accelerator process went away; %d items in flight fail", len(self._pending)
            )
        if self._refused is None:
            # What the engine last said no longer holds: it reloads from the start.
            self._infos = {
                name: dataclasses.replace(info, state="loading", error=None)
                for name, info in self._configured.items()
            }
        self._submit, self._cancel = [], []
        for flushed in self._flushes.values():
            if not flushed.done():
                flushed.set_exception(EngineUnavailable(UNREACHABLE))
        pending, self._pending = self._pending, {}
        for future, slot in pending.values():
            if not future.done():
                future.set_exception(
                    EngineUnavailable("the accelerator process went away (restarting); retry")
                )
            self._free(slot)

    async def wait_connected(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout)
        return self._connected.is_set()

    def drain(self) -> None:
        """Nothing to do here: the accelerator process drains when the supervisor stops it."""

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._channel is not None:
            self._channel.close()
        self._disconnected()
        if self.arena is not None and self.arena.close():
            self.arena = None


def _set(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)
