"""A front-end process: the HTTP server on the pod's HTTP port, and the gRPC server on its
gRPC port (``grpc/server.py``).

    python -m service.server.frontend --index I --processes N [--replacement] --run-dir DIR

It parses, authenticates, validates and decodes its own requests, and sends the decoded pixels
to the accelerator process (``dataplane/engine_client.py``). Every front end listens on both
ports with sockets of its own (``ports.py``), and the kernel spreads new connections evenly
over them, so the HTTP and gRPC work scales with the cores. On
SIGTERM it stops taking requests (readiness 503, gRPC health NOT_SERVING), finishes those in
flight within ``SERVE_GRACEFUL_TIMEOUT_S`` and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path
from typing import Any

from ..lifetime import die_with_parent, settle_garbage_collector
from ..settings import Settings
from . import ports
from .heartbeats import Heartbeats

log = logging.getLogger("service.frontend")

# Items that travel through shared memory at once, per front end (more go inline).
ARENA_SLOTS = 32


def item_bytes(settings: Settings) -> int:
    """The largest decoded image a slot must hold: the model input, 224x224 RGB by default."""
    from ..model.architectures import ARCHITECTURES

    height, width = ARCHITECTURES[settings.model].input_size
    return height * width * 3


def job_workers(settings: Settings, index: int, processes: int) -> int:
    """This front end's share of the pod's ``SERVE_JOB_CONCURRENCY`` job workers."""
    total = settings.job_concurrency
    return total // processes + (1 if index < total % processes else 0)


def server_timeouts(settings: Settings) -> dict[str, Any]:
    """uvicorn's timeouts, as the settings give them: uvicorn declares whole seconds but takes
    fractions (``asyncio.timeout``, ``call_later``), so a 0.5 s drain is 0.5 s."""
    return {
        # Longer than the idle timeout of the proxies in front (commonly 60 s), so the server
        # never closes a connection just as a proxy reuses it (docs/RELIABILITY.md).
        "timeout_keep_alive": settings.keepalive_timeout_s,
        "timeout_graceful_shutdown": settings.graceful_timeout_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a front-end process (internal)")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--processes", type=int, required=True)
    parser.add_argument("--replacement", action="store_true", help="of one that died")
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    die_with_parent()

    import uvicorn

    from ..app import create_app
    from ..dataplane.engine_client import EngineClient
    from ..jobs.shared import SharedJobStore
    from ..logs import configure_logging
    from ..metrics import Metrics
    from ..rundir import ADMISSION, ENGINE_SOCKET, HEARTBEATS, JOBS_SOCKET
    from .http import ServeHttpProtocol
    from .pod_admission import SharedAdmission

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, settings.log_tracebacks)
    metrics = Metrics(share=1 / args.processes)
    if args.replacement:
        metrics.frontend_restarts.inc()
    engine = EngineClient(
        settings,
        args.run_dir / ENGINE_SOCKET,
        index=args.index,
        slots=ARENA_SLOTS,
        slot_bytes=item_bytes(settings),
    )
    metrics.before_scrape(engine.flush_metrics)  # its batches' metrics, written on demand
    admission = SharedAdmission(
        args.run_dir / ADMISSION, args.index, settings.max_queue_images, metrics
    )
    store = None if settings.redis_url else SharedJobStore(str(args.run_dir / JOBS_SOCKET))
    app = create_app(
        settings,
        metrics=metrics,
        engine=engine,
        admission=admission,
        job_store=store,
        job_workers=job_workers(settings, args.index, args.processes),
        grpc_port=settings.grpc_port,
    )
    sock = ports.bind(settings.host, settings.port)
    beats = Heartbeats(args.run_dir / HEARTBEATS)

    class Server(uvicorn.Server):
        async def on_tick(self, counter: int) -> bool:
            # 10 a second, on the event loop: the supervisor replaces a front end whose loop
            # stopped turning (heartbeats.py).
            beats.beat(args.index)
            return await super().on_tick(counter)

        def handle_exit(self, sig: int, frame) -> None:  # type: ignore[no-untyped-def]
            # Readiness turns false at once; uvicorn then stops accepting and waits for what
            # is in flight. The signal is not re-raised: a drained SIGTERM exits 0.
            app.state.dataplane.drain()
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        http=ServeHttpProtocol,
        ws="none",
        loop="uvloop",
        h11_max_incomplete_event_size=settings.max_header_bytes,
        lifespan="on",
        # Nothing reads the client's address: no X-Forwarded-* rewriting per request.
        proxy_headers=False,
        **server_timeouts(settings),
    )
    frozen = settle_garbage_collector()
    log.info("front end %d (pid %d) serving (%d objects frozen)", args.index, os.getpid(), frozen)
    Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
