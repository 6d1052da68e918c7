"""``python -m loadtest images|run|capacity|report`` (docs/LOADTEST.md)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from .common import free_port
from .suite import capacity, images, report, runner, shapes


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
    p.add_argument(
        "--images-dir",
        default=os.environ.get("LOADTEST_IMAGES", ""),
        help="image folder (default: $LOADTEST_IMAGES, else a built-in set)",
    )
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
    p.add_argument(
        "--grpc-target",
        default="",
        help="grpc user: host:port (default: --host's host, port 8001; with --start-local, "
        "the local service's gRPC port)",
    )
    p.add_argument("--max-in-flight", type=int, default=64, help="open loop: cap per user")


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


def _check(a: argparse.Namespace) -> str | None:
    """What is wrong with the options, checked before anything starts; None: nothing."""
    try:
        if a.command in ("run", "capacity", "report") and (
            a.slo_p99_ms is not None or a.command != "report"
        ):
            capacity.check(
                a.slo_p99_ms if a.slo_p99_ms is not None else 1.0,
                a.max_error_rate,
                a.headroom,
                a.target_rps,
            )
    except ValueError as exc:
        return str(exc)
    if a.command in ("run", "capacity", "report") and not 0 <= a.settle < 1:
        return f"--settle must be in [0, 1), got {a.settle:g}"
    if a.command == "images" and a.count < 1:
        return f"--count must be at least 1, got {a.count}"
    if a.command == "report":
        if a.images_per_request is not None and a.images_per_request < 1:
            return f"--images-per-request must be at least 1, got {a.images_per_request}"
        if not (a.out / f"{report.PREFIX}_stats.csv").exists():
            return f"{a.out} has no {report.PREFIX}_stats.csv: not a load-test report folder"
    if a.command not in ("run", "capacity"):
        return None
    for name, low in (("images_per_request", 1), ("top_k", 1), ("max_in_flight", 1)):
        if getattr(a, name) < low:
            return f"--{name.replace('_', '-')} must be at least {low}, got {getattr(a, name)}"
    for name in ("arrival_rate", "think_time", "processes"):
        if getattr(a, name) < 0:
            return f"--{name.replace('_', '-')} must not be negative, got {getattr(a, name):g}"
    if a.scrape_interval <= 0:
        return f"--scrape-interval must be positive, got {a.scrape_interval:g}"
    for kv in a.local_env:
        if "=" not in kv:
            return f"--local-env takes SERVE_X=VALUE, got {kv!r}"
    try:
        shapes.plan(*_shape(a))
    except ValueError as exc:
        return f"impossible {_shape(a)[0]} shape: {exc}"
    return None


def _shape(a: argparse.Namespace) -> tuple[str, shapes.ShapeParams]:
    if a.command == "capacity":
        params = shapes.ShapeParams(
            spawn_rate=a.spawn_rate, step_users=a.step_users, step_time=a.step_time, steps=a.steps
        )
        return "step", params
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
    return a.shape, params


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = parser()
    a = ap.parse_args(argv)
    problem = _check(a)
    if problem:
        sub = f"{ap.prog} {a.command}"
        print(f"{sub}: error: {problem}", file=sys.stderr)
        return 2
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
    shape, params = _shape(a)
    grpc_target = a.grpc_target
    try:
        summary = _run(a, shape, params, grpc_target, report_args)
    except (RuntimeError, TimeoutError) as exc:  # the service or Locust failed: say so
        print(f"{ap.prog} {a.command}: {exc}", file=sys.stderr)
        return 1
    print((a.out / "summary.md").read_text())
    if "capacity" in summary:
        print(json.dumps(summary["capacity"], indent=2))
    return 0 if summary["totals"]["requests"] else 1


def _run(a, shape, params, grpc_target, report_args) -> dict:  # type: ignore[no-untyped-def]
    with contextlib.ExitStack() as stack:
        host, service_pid = a.host, 0
        if a.start_local:
            env = dict(kv.split("=", 1) for kv in a.local_env)
            # Its gRPC port free too (not the default 8001), and the grpc user sent there.
            env.setdefault("SERVE_GRPC_PORT", str(free_port()))
            grpc_target = grpc_target or f"127.0.0.1:{env['SERVE_GRPC_PORT']}"
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
            extra=["--max-in-flight", str(a.max_in_flight)]
            + (["--grpc-target", grpc_target] if grpc_target else []),
        )
        return runner.run(cfg, a.ready_timeout, **report_args)


if __name__ == "__main__":
    sys.exit(main())
