"""The accelerator process: it owns every pipeline's models, batchers and runners, and serves
all front ends over one Unix socket.

    python -m service.engine.process --run-dir DIR    (started by the supervisor)

Items from every front end meet in the same batchers, so a batch fills from all of them. The
event loop here only parses small headers, hands items (views into the front ends' shared
memory) to the batchers and writes rows back; the runners' threads do the rest. Started with
``spawn`` semantics (a fresh interpreter): nothing here was forked from a process that had
imported TensorFlow.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .. import gpu_metrics
from ..errors import ServeError
from ..metrics import Metrics
from ..pipeline.info import PipelineInfo
from ..pipeline.registry import PipelineRegistry
from ..settings import Settings
from .arena import Arena
from .channel import Channel

log = logging.getLogger("service.engine")

SOCKET = "engine.sock"


class FrontEnd:
    """One connected front end: its channel, its arena, the items it has in flight."""

    def __init__(self, server: EngineServer):
        self.server = server
        self.index = -1
        self.arena: Arena | None = None
        self.pending: dict[int, asyncio.Future] = {}
        self.gone = False
        self.channel = Channel(self.on_message, self.on_lost)

    # -- messages --------------------------------------------------------------------------

    def on_message(self, message: tuple) -> None:
        kind = message[0]
        if kind == "run":
            self.run(*message[1:])
        elif kind == "cancel":
            future = self.pending.get(message[1])
            if future is not None:
                future.cancel()
        elif kind == "hello":
            _, self.index, arena, slots, slot_bytes = message
            if arena is not None:
                self.arena = Arena(slots, slot_bytes, name=arena)
            self.channel.send(("infos", self.server.registry.infos()))
            log.info("front end %d connected", self.index)

    def run(
        self,
        rid: int,
        pipeline: str,
        slot: int,
        shape: tuple[int, ...],
        dtype: str,
        deadline: float,
        inline: bytes | None,
    ) -> None:
        if slot >= 0:
            assert self.arena is not None, "an item in a slot, but no arena"
            item = self.arena.view(slot, shape, dtype)
        else:
            item = np.frombuffer(inline or b"", dtype=dtype).reshape(shape)
        try:
            future = self.server.registry.submit(pipeline, item, deadline)
        except ServeError as exc:  # queue full, not ready, unknown pipeline
            self.channel.send(("fail", rid, exc))
            return
        except Exception as exc:
            log.exception("item refused")
            self.channel.send(("fail", rid, ServeError(f"internal error: {type(exc).__name__}")))
            return
        self.pending[rid] = future
        future.add_done_callback(partial(self.answer, rid, slot))

    def answer(self, rid: int, slot: int, future: asyncio.Future) -> None:
        self.pending.pop(rid, None)
        if self.gone:
            self.server.release(self)
            return
        if future.cancelled():
            self.channel.send(("fail", rid, None))
            return
        exc = future.exception()
        if exc is not None:
            if not isinstance(exc, ServeError):
                log.error("item failed: %s: %s", type(exc).__name__, exc)
                exc = ServeError(f"internal error in the accelerator process: {type(exc).__name__}")
            self.channel.send(("fail", rid, exc))
            return
        row, info = future.result()
        row = np.ascontiguousarray(row)
        inline = None
        if slot >= 0 and self.arena is not None and self.arena.fits(row):
            self.arena.write(slot, row)
        else:
            slot, inline = -1, row.tobytes()
        batch = (info.queue_s, info.compute_s, info.batch_size, info.padded_size)
        self.channel.send(("done", rid, slot, row.shape, row.dtype.str, batch, inline))

    def on_lost(self, exc: Exception | None) -> None:
        # Its items in batches still read its arena: they run to the end, their rows are
        # dropped, and the arena is unmapped once the last of them is done.
        self.gone = True
        log.warning("front end %d disconnected (%d items in flight)", self.index, len(self.pending))
        self.server.release(self)


class EngineServer:
    """Serves ``registry`` to every front end that connects to ``path``.

    Args:
        registry: the pipelines of this process.
    """

    def __init__(self, registry: PipelineRegistry):
        self.registry = registry
        self.frontends: set[FrontEnd] = set()
        self._server: asyncio.AbstractServer | None = None
        registry.watch(self._changed)

    async def listen(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(self._connected, path)

    def _connected(self) -> Channel:
        frontend = FrontEnd(self)
        self.frontends.add(frontend)
        return frontend.channel

    def _changed(self, info: PipelineInfo) -> None:
        for frontend in list(self.frontends):
            frontend.channel.send(("infos", {info.name: info}))

    def release(self, frontend: FrontEnd) -> None:
        """Forget a front end that went away, once none of its items is in flight."""
        if frontend.pending:
            return
        self.frontends.discard(frontend)
        if frontend.arena is not None and not frontend.arena.close():  # a view is still alive
            asyncio.get_running_loop().call_later(1.0, self.release, frontend)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def serve(settings: Settings, run_dir: Path) -> None:
    """Load the pipelines and serve them until SIGTERM (then drain and stop)."""
    metrics = Metrics()
    metrics.accelerator_starts.inc()
    gpu_metrics.install(metrics)  # absent (no error) without NVML
    registry = PipelineRegistry(settings, metrics)
    server = EngineServer(registry)
    await server.listen(str(run_dir / SOCKET))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def load() -> None:
        try:
            await registry.start()
        except Exception:  # its state is failed; the front ends report it (/healthz 503)
            log.critical("model loading failed; the front ends report it")

    async def tick() -> None:
        while True:
            metrics.refresh()
            await asyncio.sleep(1.0)

    tasks: list[Any] = [asyncio.create_task(load()), asyncio.create_task(tick())]
    log.info("accelerator process %d serving on %s", os.getpid(), run_dir / SOCKET)
    await stop.wait()
    log.info("accelerator process: stopping")
    registry.drain()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await registry.stop()
    await server.close()


def main(argv: list[str] | None = None) -> int:
    from ..lifetime import die_with_parent, run
    from ..logs import configure_logging

    parser = argparse.ArgumentParser(description="the accelerator process (internal)")
    parser.add_argument("--run-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    die_with_parent()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, settings.log_tracebacks)
    from ..model.backends import select

    select(settings.backend)  # before anything imports Keras
    run(serve(settings, args.run_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
