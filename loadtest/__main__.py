"""``python -m loadtest images|run|capacity|report`` (docs/LOADTEST.md)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

from .suite import images, report, runner, shapes


def _common(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", help="service URL, e.g. http://127.0.0.1:8000")
    where.add_argument(
        "--start-local",
        action="store_true",
        help="start `python -m service` on a free loopback port for the run",
    )
    p.add_argument(
        "--local-env",
        action="append",
        default=[],
        metavar="SERVE_X=VALUE",
        help="settings of the local service (repeatable), e.g. SERVE_WEIGHTS=random",
    )
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--tags", nargs="+", default=["classify-raw"], help="Locust tags to run")
    p.add_argument("--exclude-tags", nargs="+", default=[], help="Locust tags to leave out")
    p.add_argument("--images-dir", default="", help="image folder (default: built-in set)")
    p.add_argument("--images-per-request", type=int, default=1)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--arrival-rate", type=float, default=0.0, help="open loop: total req/s")
    p.add_argument("--think-time", type=float, default=0.0, help="closed loop: s between requests")
    p.add_argument("--spawn-rate", type=float, default=10.0, help="users started per second")
    p.add_argument("--processes", type=int, default=0, help="Locust worker processes here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scrape-interval", type=float, default=1.0, help="/metrics every N s")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="wait for /readyz")
    p.add_argument("--settle", type=float, default=0.25, help="fraction of each level skipped")


def _capacity_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--slo-p99-ms", type=float, required=required, help="p99 objective (ms)")
    p.add_argument("--max-error-rate", type=float, default=0.01, help="error-rate ceiling")
    p.add_argument("--target-rps", type=float, help="request rate to size the deployment for")
    p.add_argument("--headroom", type=float, default=0.8, help="use of each replica (0-1]")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("images", help="write a reproducible image set into a folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, default=24)
    p.add_argument("--profile", choices=sorted(images.PROFILES), default="mixed")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("run", help="one headless run and its report")
    _common(p)
    p.add_argument("--shape", choices=shapes.SHAPES, default="constant")
    p.add_argument("--users", type=int, default=4, help="constant/soak users; spike base")
    p.add_argument("--run-time", type=shapes.seconds, default=60.0, help="constant/spike/soak")
    p.add_argument("--step-users", type=int, default=2)
    p.add_argument("--step-time", type=shapes.seconds, default=30.0)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--spike-users", type=int, default=16)
    p.add_argument("--spike-at", type=shapes.seconds, default=20.0)
    p.add_argument("--spike-duration", type=shapes.seconds, default=10.0)
    p.add_argument("--ramp-time", type=shapes.seconds, default=60.0)
    _capacity_args(p, required=False)

    p = sub.add_parser("capacity", help="step load until the objective breaks; size the fleet")
    _common(p)
    p.add_argument("--step-users", type=int, default=2)
    p.add_argument("--step-time", type=shapes.seconds, default=30.0)
    p.add_argument("--steps", type=int, default=8)
    _capacity_args(p, required=True)

    p = sub.add_parser("report", help="rebuild plots and summaries of a report folder")
    p.add_argument("out", type=Path)
    _capacity_args(p, required=False)
    p.add_argument("--settle", type=float, default=0.25)
    p.add_argument(
        "--images-per-request",
        type=int,
        help="of the run, for the HPA target (default: run.json's; 1 without one)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    a = parser().parse_args(argv)
    report_args = {}
    if a.command in ("run", "capacity", "report"):
        report_args = {
            "slo_p99_ms": a.slo_p99_ms,
            "max_error_rate": a.max_error_rate,
            "target_rps": a.target_rps,
            "headroom": a.headroom,
            "settle": a.settle,
        }
    if a.command == "images":
        files = images.generate(a.out, a.count, a.profile, a.seed)
        total = sum(f.bytes for f in files)
        print(f"{len(files)} images, {total / 1e6:.1f} MB, in {a.out}")
        return 0
    if a.command == "report":
        summary = report.build(a.out, images_per_request=a.images_per_request, **report_args)
        print((a.out / "summary.md").read_text())
        return 0 if summary["totals"]["requests"] else 1
    if a.command == "capacity":
        params = shapes.ShapeParams(
            spawn_rate=a.spawn_rate, step_users=a.step_users, step_time=a.step_time, steps=a.steps
        )
        shape = "step"
    else:
        params = shapes.ShapeParams(
            users=a.users,
            spawn_rate=a.spawn_rate,
            run_time=a.run_time,
            step_users=a.step_users,
            step_time=a.step_time,
            steps=a.steps,
            spike_users=a.spike_users,
            spike_at=a.spike_at,
            spike_duration=a.spike_duration,
            ramp_time=a.ramp_time,
        )
        shape = a.shape
    with contextlib.ExitStack() as stack:
        host, service_pid = a.host, 0
        if a.start_local:
            env = dict(kv.split("=", 1) for kv in a.local_env)
            host, service_pid = stack.enter_context(
                runner.local_service(env, a.out / "service.log", a.ready_timeout)
            )
        cfg = runner.RunConfig(
            host=host,
            out=a.out,
            shape=shape,
            params=params,
            tags=a.tags,
            exclude_tags=a.exclude_tags,
            arrival_rate=a.arrival_rate,
            think_time=a.think_time,
            images_dir=a.images_dir,
            images_per_request=a.images_per_request,
            top_k=a.top_k,
            seed=a.seed,
            scrape_interval=a.scrape_interval,
            processes=a.processes,
            service_pid=service_pid,
        )
        summary = runner.run(cfg, a.ready_timeout, **report_args)
    print((a.out / "summary.md").read_text())
    if "capacity" in summary:
        print(json.dumps(summary["capacity"], indent=2))
    return 0 if summary["totals"]["requests"] else 1


if __name__ == "__main__":
    sys.exit(main())
