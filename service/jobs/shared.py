"""The in-memory job store shared by the pod's front-end processes.

The supervisor holds one ``MemoryJobStore`` and serves it on a Unix socket
(:class:`StoreServer`); each front end's job runner uses :class:`SharedJobStore`, the same
interface over the socket. A job a front end took is queued again if that front end's
connection drops while the job runs (the process died), so it runs once more elsewhere in the
pod: delivery is at least once, as with the Redis store across replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from functools import partial
from typing import Any

from ..errors import StoreUnavailable
from ..wire.channel import Channel
from .memory import MemoryJobStore
from .record import Claim, Job, JobStore

log = logging.getLogger(__name__)

_METHODS = ("submit", "get", "cancel", "take", "renew", "save", "ack")


class StoreServer:
    """Serves ``store`` to the front ends (in the supervisor)."""

    def __init__(self, store: MemoryJobStore):
        self.store = store
        self._server: asyncio.AbstractServer | None = None

    async def listen(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._server = await asyncio.get_running_loop().create_unix_server(self._connected, path)

    def _connected(self) -> Channel:
        return _Connection(self.store).channel

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class _Connection:
    """One front end's connection: its calls, and the jobs its runner is running."""

    def __init__(self, store: MemoryJobStore):
        self.store = store
        self.taken: set[str] = set()
        self.channel = Channel(self.on_message, self.on_lost)

    def on_message(self, message: tuple) -> None:
        _, rid, method, args = message
        asyncio.get_running_loop().create_task(self.answer(rid, method, args))

    async def answer(self, rid: int, method: str, args: tuple) -> None:
        try:
            if method not in _METHODS:
                raise ValueError(f"no store method {method!r}")
            result = await getattr(self.store, method)(*args)
        except Exception as exc:
            self.channel.send(("err", rid, exc))
            return
        if method == "save":
            # The store stamps a finished job's expiry on its copy; the caller's copy is what
            # its runner goes on to send (a callback's body), so it gets the stamp back.
            result = args[0].expires_at
        if method == "take" and result is not None:
            self.taken.add(result.job.id)
        elif method == "ack" or (method == "save" and args[0].finished):
            job = args[0] if method == "save" else args[0].job
            self.taken.discard(job.id)
        self.channel.send(("ok", rid, result))

    def on_lost(self, exc: Exception | None) -> None:
        for job_id in self.taken:
            self.store.requeue(job_id)
        if self.taken:
            log.warning("a front end went away running %d job(s): queued again", len(self.taken))


class SharedJobStore(JobStore):
    """The supervisor's store, from a front end.

    Args:
        path: the store server's socket.
    """

    def __init__(self, path: str):
        self.path = path
        self._channel: Channel | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count()
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self._connect()

    async def _connect(self) -> Channel:
        async with self._lock:
            if self._channel is None or self._channel.closed:
                loop = asyncio.get_running_loop()
                try:
                    _, channel = await loop.create_unix_connection(
                        partial(Channel, self._on_message, self._on_lost), self.path
                    )
                except OSError as exc:
                    raise StoreUnavailable(f"the job store is unreachable: {exc}; retry") from None
                assert isinstance(channel, Channel)
                self._channel = channel
            return self._channel

    def _on_message(self, message: tuple) -> None:
        kind, rid, value = message
        future = self._pending.pop(rid, None)
        if future is None or future.done():
            return
        if kind == "ok":
            future.set_result(value)
        else:
            future.set_exception(value)

    def _on_lost(self, exc: Exception | None) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(StoreUnavailable("the job store went away; retry"))

    async def _call(self, method: str, *args: Any) -> Any:
        channel = await self._connect()
        rid = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        channel.send(("call", rid, method, args))
        return await future

    async def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    async def submit(self, job: Job, images: list[bytes]) -> None:
        await self._call("submit", job, images)

    async def get(self, job_id: str) -> Job | None:
        return await self._call("get", job_id)

    async def cancel(self, job_id: str) -> Job | None:
        return await self._call("cancel", job_id)

    async def take(self, timeout_s: float) -> Claim | None:
        return await self._call("take", timeout_s)

    async def renew(self, claim: Claim) -> None:
        await self._call("renew", Claim(claim.job, [], claim.token))

    async def save(self, job: Job) -> None:
        job.expires_at = await self._call("save", job)

    async def ack(self, claim: Claim) -> None:
        await self._call("ack", Claim(claim.job, [], claim.token))
