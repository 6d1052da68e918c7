"""A front end's way to the accelerator process: the dataplane's engine, over the channel.

Each item goes into a slot of this front end's shared-memory arena and a ~100-byte header
crosses the socket; the row comes back in the same slot. Until the accelerator process has
answered ``hello`` (it is starting, or restarting after a crash), every pipeline reads as
``loading`` and items are refused with 503 ``engine_unavailable`` at once; the client keeps
reconnecting, and items in flight when the connection drops fail the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import EngineUnavailable, ShuttingDown
from ..pipeline.config import load_pipelines
from ..pipeline.info import BatchInfo, PipelineInfo
from ..pipeline.pipeline import configured_info
from ..settings import Settings
from .arena import Arena
from .channel import Channel

log = logging.getLogger(__name__)

RECONNECT_S = 0.2


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
        self._pending: dict[int, tuple[asyncio.Future, int]] = {}
        self._ids = itertools.count()
        self._task: asyncio.Task | None = None
        self._stopping = False

    # -- what the dataplane asks -----------------------------------------------------------

    def names(self) -> list[str]:
        return list(self._configured)

    def info(self, name: str) -> PipelineInfo:
        from ..pipeline.registry import PipelineNotFound

        try:
            return self._infos[name]
        except KeyError:
            raise PipelineNotFound.of(name, self.names()) from None

    async def run(
        self, name: str, item: np.ndarray, deadline: float
    ) -> tuple[np.ndarray, BatchInfo]:
        """One item through the pipeline's stages in the accelerator process."""
        channel = self._channel
        if channel is None or channel.closed:
            raise EngineUnavailable("the accelerator process is not reachable (restarting); retry")
        arena = self.arena
        slot = arena.take() if arena is not None and arena.fits(item) else -1
        inline = None
        if slot >= 0:
            assert arena is not None
            arena.write(slot, item)
        else:
            inline = np.ascontiguousarray(item).tobytes()
        rid = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[rid] = (future, slot)
        channel.send(("run", rid, name, slot, item.shape, item.dtype.str, deadline, inline))
        try:
            return await future
        except asyncio.CancelledError:
            # The slot stays taken until the engine answers: it may be reading the item now.
            channel.send(("cancel", rid))
            raise

    def _on_message(self, message: tuple) -> None:
        kind = message[0]
        if kind == "done":
            _, rid, slot, shape, dtype, batch, inline = message
            future, taken = self._pending.pop(rid)
            if not future.done():
                if slot >= 0:
                    assert self.arena is not None
                    row = self.arena.view(slot, shape, dtype).copy()
                else:
                    row = np.frombuffer(inline, dtype=dtype).reshape(shape)
                future.set_result((row, BatchInfo(*batch)))
            self._free(taken)
        elif kind == "fail":
            _, rid, error = message
            future, taken = self._pending.pop(rid)
            if not future.done():
                future.set_exception(error or ShuttingDown("the item was cancelled"))
            self._free(taken)
        elif kind == "infos":
            self._infos.update(message[1])
            self._connected.set()

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
        while not self._stopping:
            lost: asyncio.Future = loop.create_future()
            try:
                _, channel = await loop.create_unix_connection(
                    partial(Channel, self._on_message, partial(_set, lost)), self.socket_path
                )
            except OSError:
                await asyncio.sleep(RECONNECT_S)
                continue
            assert isinstance(channel, Channel)
            arena = self.arena
            hello = (arena.name, arena.slots, arena.slot_bytes) if arena else (None, 0, 0)
            channel.send(("hello", self.index, *hello))
            self._channel = channel
            await lost
            self._disconnected()

    def _disconnected(self) -> None:
        self._channel = None
        self._connected.clear()
        if not self._stopping:
            log.error(
                "the accelerator process went away; %d items in flight fail", len(self._pending)
            )
        # What the engine last said no longer holds: it reloads from the start.
        self._infos = {
            name: dataclasses.replace(info, state="loading", error=None)
            for name, info in self._configured.items()
        }
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
