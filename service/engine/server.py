"""The accelerator process's side of the wire: every front end's connection, its items into
the batchers, and its answers back, one message per batch.

A front end's ``Submit`` (the items it had ready together) becomes one ``submit_many`` per
pipeline: views into the front end's shared memory, each with a :class:`Ticket` as its reply.
When a batch finishes, the batcher answers its tickets in one event-loop turn; each front end
collects its own and, at the end of that turn, gets one ``Done`` (rows written into their slots
with one vectorised copy) and at most one ``Failed`` per error. No future, callback or message
per item.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid

import numpy as np

from ..errors import InternalError, ServeError
from ..pipeline.info import BatchInfo, PipelineInfo
from ..wire import messages as m
from ..wire.arena import Arena
from ..wire.channel import Channel, msgpack_codec
from .registry import PipelineRegistry

log = logging.getLogger("service.engine")


class Ticket:
    """One front end's item in the batchers: the reply (``batcher.Reply``) that routes its
    answer to that front end's next message. Answered exactly once; a cancelled ticket's answer
    only tells the front end that the item's slot is free."""

    __slots__ = ("answered", "cancelled", "frontend", "id", "slot", "task", "trace")

    def __init__(self, frontend: FrontEnd, rid: int, slot: int, trace: str | None = None):
        self.frontend = frontend
        self.id = rid
        self.slot = slot
        self.trace = trace
        self.answered = False
        self.cancelled = False
        self.task: asyncio.Task | None = None  # multi-stage pipelines run each item in a task

    def done(self) -> bool:
        return self.answered or self.cancelled

    def set_result(self, result: tuple[np.ndarray, BatchInfo]) -> None:
        if not self.answered:
            self.answered = True
            self.frontend.finished(self, result)

    def set_exception(self, exc: BaseException) -> None:
        if not self.answered:
            self.answered = True
            self.frontend.failed(self, exc)


class FrontEnd:
    """One connected front end: its channel, its arena, its items in flight, its outbox."""

    def __init__(self, server: EngineServer):
        self.server = server
        self.index = -1
        self.arena: Arena | None = None
        self.welcomed = False
        self.gone = False
        self.pending: dict[int, Ticket] = {}
        # (row shape, dtype, compute_s, batch size, padded size) -> [(id, slot, queue_s, row)]
        self._done: dict[tuple, list[tuple[int, int, float, np.ndarray]]] = {}
        self._failed: dict[int, tuple[BaseException | None, list[int]]] = {}
        self._flushing = False
        self.channel = Channel(self.on_message, self.on_lost, msgpack_codec(m.ToEngine))

    # -- what the front end sends ----------------------------------------------------------

    def on_message(self, message: m.Hello | m.Submit | m.Cancel | m.FlushMetrics) -> None:
        if isinstance(message, m.Submit):
            if self.welcomed:
                self.submit(message.items)
            else:
                self.refuse("items before hello")
        elif isinstance(message, m.Cancel):
            for rid in message.ids:
                ticket = self.pending.get(rid)
                if ticket is not None:
                    ticket.cancelled = True
                    if ticket.task is not None:
                        ticket.task.cancel()
        elif isinstance(message, m.FlushMetrics):
            # The tally only: the gauges computed on demand (and NVML's readings) are refreshed
            # each second, and a scrape must not cost this loop more than a few writes.
            self.server.registry.metrics.tally.flush()
            self.channel.send(m.MetricsFlushed(message.token))
        elif isinstance(message, m.Hello):
            self.hello(message)

    def hello(self, hello: m.Hello) -> None:
        if hello.version != m.VERSION:
            self.refuse(
                f"front end {hello.frontend} speaks version {hello.version} of the messages, "
                f"the accelerator process {m.VERSION}: they come from different builds"
            )
            return
        self.index = hello.frontend
        if hello.arena is not None:
            # Refused with the reason, not dropped: the front end comes back with a new arena.
            try:
                self.arena = Arena(hello.slots, hello.slot_bytes, name=hello.arena)
            except (OSError, ValueError) as exc:  # the segment is gone, or not that size
                self.refuse(f"front end {hello.frontend}'s arena {hello.arena}: {exc}", arena=True)
                return
        self.welcomed = True
        self.channel.send(m.Welcome(m.VERSION, self.server.registry.infos()))
        self.server.welcome(self)
        log.info("front end %d connected", self.index)

    def refuse(self, reason: str, arena: bool = False) -> None:
        log.log(logging.ERROR if arena else logging.CRITICAL, "refusing a front end: %s", reason)
        self.channel.send(m.Refused(reason, arena))
        self.channel.close()

    def submit(self, items: list[m.Item]) -> None:
        by_pipeline: dict[str, list] = {}
        arena = self.arena
        for it in items:
            ticket = Ticket(self, it.id, it.slot, it.trace)
            self.pending[it.id] = ticket
            try:
                if it.slot < 0:
                    payload = np.frombuffer(it.data or b"", dtype=it.dtype).reshape(it.shape)
                elif arena is None:
                    raise ValueError("an item in a slot, but no arena")
                else:
                    payload = arena.view(it.slot, it.shape, it.dtype)
            except (ValueError, TypeError) as exc:  # a front end's bug: this item fails alone
                log.error("front end %d: an unreadable item: %s", self.index, exc)
                ticket.set_exception(ServeError(f"the accelerator process cannot read it: {exc}"))
                continue
            by_pipeline.setdefault(it.pipeline, []).append((payload, it.deadline, ticket))
        registry = self.server.registry
        for name, entries in by_pipeline.items():
            try:
                tasks = registry.submit_many(name, entries)
            except ServeError as exc:  # not ready, unknown pipeline
                for _, _, ticket in entries:
                    ticket.set_exception(exc)
                continue
            for reply, task in tasks:  # multi-stage pipelines: a task per item
                assert isinstance(reply, Ticket)
                reply.task = task

    # -- what goes back --------------------------------------------------------------------

    def finished(self, ticket: Ticket, result: tuple[np.ndarray, BatchInfo]) -> None:
        if self._forget(ticket):
            return
        if ticket.cancelled:
            self._fail_later(None, ticket.id)
            return
        row, info = result
        key = (row.shape, row.dtype.str, info.compute_s, info.batch_size, info.padded_size)
        self._done.setdefault(key, []).append((ticket.id, ticket.slot, info.queue_s, row))
        self._schedule()

    def failed(self, ticket: Ticket, exc: BaseException) -> None:
        if self._forget(ticket):
            return
        self._fail_later(None if ticket.cancelled else exc, ticket.id)

    def _forget(self, ticket: Ticket) -> bool:
        """The ticket leaves; True when nobody is there to answer (the front end is gone)."""
        self.pending.pop(ticket.id, None)
        if self.gone:
            self.server.release(self)
            return True
        return False

    def _fail_later(self, exc: BaseException | None, rid: int) -> None:
        key = id(exc)
        entry = self._failed.get(key)
        if entry is None:
            entry = self._failed[key] = (exc, [])
        entry[1].append(rid)
        self._schedule()

    def _schedule(self) -> None:
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Send what finished in this event-loop turn: one ``Done`` per batch, one ``Failed``
        per error."""
        self._flushing = False
        done, self._done = self._done, {}
        failed, self._failed = self._failed, {}
        if self.gone or self.channel.closed:
            # Nobody reads the answers, and once the front end has seen the loss its slots
            # hold the items of its next connection: no row may be written there.
            return
        # Each answer alone: one that cannot be built or encoded must not lose the others.
        for (shape, dtype, compute_s, size, padded), entries in done.items():
            try:
                self.channel.send(
                    self._done_message(shape, dtype, compute_s, size, padded, entries)
                )
            except Exception as exc:
                self._unsendable([e[0] for e in entries], exc)
        for error, ids in failed.values():
            try:
                self.channel.send(m.Failed(ids, None if error is None else _wire_error(error)))
            except Exception as exc:
                self._unsendable(ids, exc)

    def _unsendable(self, ids: list[int], exc: Exception) -> None:
        """Fail items whose answer could not be sent, so that their slots come back."""
        error_id = uuid.uuid4().hex[:12]
        log.error(
            "front end %d: the answer for %d items could not be sent (error id %s)",
            self.index,
            len(ids),
            error_id,
            exc_info=exc,
        )
        error = InternalError(
            f"the accelerator process could not send this answer; quote error id {error_id}",
            error_id=error_id,
        )
        self.channel.send(m.Failed(ids, m.Error.of(error)))

    def _done_message(
        self,
        shape: tuple[int, ...],
        dtype: str,
        compute_s: float,
        size: int,
        padded: int,
        entries: list[tuple[int, int, float, np.ndarray]],
    ) -> m.Done:
        ids = [e[0] for e in entries]
        slots = [e[1] for e in entries]
        queue_s = [e[2] for e in entries]
        arena = self.arena
        if len(entries) == 1 and slots[0] >= 0 and arena is not None:
            row = entries[0][3]
            if row.nbytes <= arena.slot_bytes:
                arena.write(slots[0], row)
                return m.Done(ids, slots, queue_s, shape, dtype, compute_s, size, padded)
        rows = np.stack([e[3] for e in entries])
        data = None
        if arena is not None and rows[0].nbytes <= arena.slot_bytes:
            in_slots = [i for i, slot in enumerate(slots) if slot >= 0]
            if in_slots:
                arena.write_rows([slots[i] for i in in_slots], rows[in_slots])
            if len(in_slots) < len(slots):
                data = rows[[i for i, slot in enumerate(slots) if slot < 0]].tobytes()
        else:
            slots = [-1] * len(slots)
            data = rows.tobytes()
        return m.Done(ids, slots, queue_s, shape, dtype, compute_s, size, padded, data)

    def on_lost(self, exc: Exception | None) -> None:
        # Its items in batches still read its arena: they run to the end, their rows are
        # dropped, and the arena is unmapped once the last of them is done.
        self.gone = True
        for ticket in self.pending.values():
            ticket.cancelled = True  # dropped before the model if not yet in a batch
            if ticket.task is not None:
                ticket.task.cancel()
        log.warning("front end %d disconnected (%d items in flight)", self.index, len(self.pending))
        self.server.release(self)


def _wire_error(exc: BaseException) -> m.Error:
    if not isinstance(exc, ServeError):
        log.error("item failed: %s: %s", type(exc).__name__, exc)
        exc = ServeError(f"internal error in the accelerator process: {type(exc).__name__}")
    return m.Error.of(exc)


class EngineServer:
    """Serves ``registry`` to every front end that connects to ``path``.

    Args:
        registry: the pipelines of this process.
    """

    def __init__(self, registry: PipelineRegistry):
        self.registry = registry
        self.frontends: set[FrontEnd] = set()  # connected and welcomed
        self._server: asyncio.AbstractServer | None = None
        registry.watch(self._changed)

    async def listen(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(self._connected, path)

    def _connected(self) -> Channel:
        return FrontEnd(self).channel

    def welcome(self, frontend: FrontEnd) -> None:
        self.frontends.add(frontend)

    def _changed(self, info: PipelineInfo) -> None:
        for frontend in list(self.frontends):
            frontend.channel.send(m.Infos({info.name: info}))

    def release(self, frontend: FrontEnd) -> None:
        """Forget a front end that went away, once none of its items is in flight."""
        if frontend.pending:
            return
        self.frontends.discard(frontend)
        if frontend.arena is not None and not frontend.arena.close():  # a view is still alive
            asyncio.get_running_loop().call_later(1.0, self.release, frontend)
        else:
            frontend.arena = None

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
