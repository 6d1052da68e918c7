"""Interleaved A/B of two service configurations under the same load, run by hand.

    python -m loadtest.bench.ab [--rounds 5] [--seconds 5] [--connections 16] [--image JPEG]
        [--a-env K=V ...] [--b-env K=V ...] [--a-checkout DIR] [--b-checkout DIR]
        [--a-path PATH] [--b-path PATH]

This VM's speed drifts by 10 % and more within minutes, so two benchmark runs one after the
other compare two moments of the machine as much as two configurations. Here both services
(``python -m service`` with the stand-in model, one front end each unless the env says
otherwise) run side by side, and ``wrk`` loads one, then the other, in short bursts in ABBA
order (``h2load`` for gRPC); the idle one costs next to nothing meanwhile. Reported per side:
the median over the rounds of images/s and of each thread's CPU per image (front end: its
event loop, its decode thread, gRPC's threads; the accelerator process: its event loop and its
runner), read from ``/proc``.

A side is an environment (``SERVE_*`` overrides, or e.g. ``PILLOW_BLOCKS_MAX=0``), a
checkout (another commit's git worktree, run with this checkout's virtual environment), and a
path of ``make bench-serving`` (``http``, ``v2-http``, ``grpc`` or ``grpc-stream``; the same
request bodies): two sides that differ only in the path show what one protocol costs beyond
the other.
Linux only. Not used by the service or the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from loadtest.bench.cpu_split import threads_cpu
from loadtest.bench.serving import CACHE, PATHS, Body, bodies, h2load, jpeg, standin, wrk
from loadtest.common import ROOT, free_port


def _start(checkout: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int, int]:
    port, grpc_port = free_port(), free_port()
    full = dict(os.environ)
    full.update(
        SERVE_PORT=str(port),
        SERVE_GRPC_PORT=str(grpc_port),
        SERVE_WEIGHTS=str(standin(CACHE / "standin.keras")),
        SERVE_XLA="true",
        SERVE_LOG_LEVEL="warning",
        SERVE_FRONTEND_PROCESSES="1",
    )
    full.update(env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=checkout,
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service in {checkout} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc, port, grpc_port
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the service in {checkout} was not ready in 300 s")


def _threads(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of the service's front ends and accelerator process."""
    out: dict[str, float] = {}
    for child in psutil.Process(pid).children():
        command = " ".join(child.cmdline())
        if "frontend" in command:
            role = "front end"
        elif "service.engine" in command:
            role = "accelerator"
        else:
            continue
        for name, seconds in threads_cpu(child.pid).items():
            if name == "python (main)":
                name = "event loop"
            elif name == "python" and role == "front end":
                name = "decode thread"  # a front end's only other busy thread
            key = f"{role}: {name}"
            out[key] = out.get(key, 0.0) + seconds
    return out


def _burst(
    port: int, grpc_port: int, path: str, body: Body, seconds: float, connections: int
) -> float:
    if path.startswith("grpc"):
        address = f"127.0.0.1:{grpc_port}"
        connections = max(1, connections // body.messages)
        return h2load(address, body, connections, seconds, None)["images_per_s"]
    out = wrk(f"http://127.0.0.1:{port}", body, connections, seconds, None)
    if out["non_2xx"]:
        raise SystemExit(f"{out['non_2xx']} errors under load on {body.path}")
    return out["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--image", type=Path, help="default: the bench-serving 640x480 JPEG")
    for side in "ab":
        parser.add_argument(f"--{side}-env", nargs="*", default=[], metavar="K=V")
        parser.add_argument(f"--{side}-checkout", type=Path, default=ROOT)
        parser.add_argument(f"--{side}-path", choices=PATHS, default="http")
    args = parser.parse_args()
    image = args.image or jpeg(CACHE / "bench-serving.jpg")
    sides = {
        "A": (args.a_checkout, dict(kv.split("=", 1) for kv in args.a_env)),
        "B": (args.b_checkout, dict(kv.split("=", 1) for kv in args.b_env)),
    }
    paths = {"A": args.a_path, "B": args.b_path}
    running = {name: _start(*side) for name, side in sides.items()}
    requests = {}
    for name, (_, port, _) in running.items():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
            model = json.loads(r.read())["models"][0]["name"]
        requests[name] = bodies(image, model)[paths[name]]
    rows: dict[str, list[tuple[float, dict[str, float]]]] = {"A": [], "B": []}
    try:
        for i in range(args.rounds):
            order = "AB" if i % 2 == 0 else "BA"
            for name in order:
                proc, port, grpc_port = running[name]
                before = _threads(proc.pid)
                rate = _burst(
                    port, grpc_port, paths[name], requests[name], args.seconds, args.connections
                )
                after = _threads(proc.pid)
                images = rate * args.seconds
                per = {k: (v - before.get(k, 0.0)) / images * 1e6 for k, v in after.items()}
                rows[name].append((rate, per))
                print(f"round {i + 1} {name}: {rate:.0f} images/s", flush=True)
    finally:
        for proc, _, _ in running.values():
            proc.terminate()
        for proc, _, _ in running.values():
            proc.wait(60)
    for name, (checkout, env) in sides.items():
        rates = [rate for rate, _ in rows[name]]
        keys = sorted({k for _, per in rows[name] for k in per})
        cpu = {k: statistics.median(per.get(k, 0.0) for _, per in rows[name]) for k in keys}
        shown = ", ".join(f"{k} {v:.0f}" for k, v in cpu.items() if v >= 5)
        where = f"{checkout}, {env or 'defaults'}, {paths[name]}"
        print(f"{name} ({where}): median {statistics.median(rates):.0f}")
        print(f"  images/s; CPU us per image: {shown}")


if __name__ == "__main__":
    main()
