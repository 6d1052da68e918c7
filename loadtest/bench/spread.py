"""How a closed-loop load's connections spread over the front ends, run by hand.

    python -m loadtest.bench.spread [--frontends 8] [--processes 4] [--connections 64]
                                    [--seconds 10] [--checkout DIR] [--json FILE]

Starts the service (the stand-in model, ``--frontends`` front ends; ``--checkout``: another
commit's git worktree, run with this checkout's virtual environment), puts the closed-loop load
of ``loadgen.py`` on it (``--processes`` x ``--connections`` keep-alive clients that connect
at once, as the GPU benchmark's do), counts each front end's connections on the HTTP port in
the middle of the load, and prints them beside images/s and p50/p99. The figures in
docs/BENCHMARKS.md, "Connections over the front ends", come from it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from loadtest.bench.loadgen import closed_loop
from loadtest.bench.serving import CACHE, jpeg, standin
from loadtest.common import ROOT, free_port, serving


def connections_by_frontend(pid: int, port: int) -> list[int]:
    """Established connections on ``port`` held by each front end of the service ``pid``."""
    import psutil

    counts = []
    for child in psutil.Process(pid).children():
        try:
            if "service.server.frontend" not in " ".join(child.cmdline()):
                continue
            held = child.net_connections("tcp")
        except psutil.NoSuchProcess:  # a front end replaced meanwhile
            continue
        counts.append(
            sum(1 for c in held if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port)
        )
    return sorted(counts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frontends", type=int, default=8)
    parser.add_argument("--processes", type=int, default=4, help="load processes")
    parser.add_argument("--connections", type=int, default=64, help="per load process")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--checkout", type=Path, default=ROOT)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    port = free_port()
    env = {
        **os.environ,
        "SERVE_PORT": str(port),
        "SERVE_GRPC_PORT": str(free_port()),
        "SERVE_WEIGHTS": str(standin(CACHE / "standin.keras")),
        "SERVE_XLA": "true",
        "SERVE_LOG_LEVEL": "warning",
        "SERVE_FRONTEND_PROCESSES": str(args.frontends),
    }
    image = jpeg(CACHE / "bench-serving.jpg").read_bytes()
    cmd = [sys.executable, "-m", "service"]
    with serving(cmd, port, CACHE / "bench-spread.log", env, cwd=args.checkout) as (url, proc):
        result: dict = {}

        def load() -> None:
            result.update(
                closed_loop(
                    url,
                    image,
                    processes=args.processes,
                    connections=args.connections,
                    seconds=args.seconds,
                    warmup_s=args.warmup,
                )
            )

        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(args.warmup + args.seconds / 2)
        counts = connections_by_frontend(proc.pid, port)
        loader.join()
    report = {
        "checkout": str(args.checkout),
        "frontends": args.frontends,
        "connections_per_frontend": counts,
        "images_per_s": result["requests_per_s"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "errors": result["errors"],
    }
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
