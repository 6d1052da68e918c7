"""The accelerator process: it owns every pipeline's models, batchers and runners, and serves
all front ends over one Unix socket.

    python -m service.engine.process --run-dir DIR    (started by the supervisor)

Items from every front end meet in the same batchers, so a batch fills from all of them. The
event loop here only decodes the front ends' messages (``server.py``), hands items (views into
the front ends' shared memory) to the batchers in bulk and writes each batch's rows back in one
message per front end; the runners' threads do the rest. Started with ``spawn`` semantics (a
fresh interpreter): nothing here was forked from a process that had imported TensorFlow.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from .. import gpu_metrics, tracing
from ..lifetime import settle_garbage_collector
from ..metrics import Metrics
from ..rundir import ENGINE_SOCKET
from ..settings import Settings
from .registry import PipelineRegistry
from .server import EngineServer

log = logging.getLogger("service.engine")


async def serve(settings: Settings, run_dir: Path) -> None:
    """Load the pipelines and serve them until SIGTERM (then drain and stop)."""
    metrics = Metrics()
    metrics.accelerator_starts.inc()
    gpu_metrics.install(metrics)  # absent (no error) without NVML
    registry = PipelineRegistry(settings, metrics)
    server = EngineServer(registry)
    await server.listen(str(run_dir / ENGINE_SOCKET))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def load() -> None:
        try:
            await registry.start()
        except Exception:  # its state is failed; the front ends report it (/healthz 503)
            log.critical("model loading failed; the front ends report it")
            return
        started = time.perf_counter()
        frozen = settle_garbage_collector()
        log.info(
            "accelerator process: %d objects frozen out of the collector (%.0f ms)",
            frozen,
            1e3 * (time.perf_counter() - started),
        )

    async def tick() -> None:
        while True:
            metrics.refresh()
            await asyncio.sleep(1.0)

    tasks: list[Any] = [asyncio.create_task(load()), asyncio.create_task(tick())]
    log.info("accelerator process %d serving on %s", os.getpid(), run_dir / ENGINE_SOCKET)
    await stop.wait()
    log.info("accelerator process: stopping")
    registry.drain()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await registry.stop()
    await server.close()
    tracing.shutdown()  # export the last batches' spans


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
    tracing.configure()  # OTEL_* variables; off without them
    from ..model.backends import select

    select(settings.backend)  # before anything imports Keras
    run(serve(settings, args.run_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
