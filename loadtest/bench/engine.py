"""``make bench-engine``: the accelerator process alone, fed over the real wire.

    python -m loadtest.bench.engine [--batches 1,8,32,128] [--seconds 8] [--backend jax]
        [--json OUT]

For each batch size B: the accelerator process (``python -m service.engine.process``, the
stand-in model, compiled with XLA, on JAX or ``--backend tensorflow``: ResNet50's input and
output, almost no work between them) pinned to one core with ``SERVE_MAX_BATCH_SIZE=B``, and
synthetic front ends on the other cores: the real client (``dataplane/engine_client.py``)
sending pre-decoded 224x224 pixels in a closed loop, 2B items in flight in all, so that every
batch is full and no HTTP or decode runs. Reported per
B: items/s, the mean batch (from the process's own metrics), and the accelerator process's CPU
per item and per batch, split by thread (event loop, runner, assembly, the rest), the model's
call per batch, and a least-squares split of the CPU into a part per item and a part per batch:
of the whole process, of its event loop's thread, and of the process besides the model's call
(the stand-in model costs 0.1-0.2 ms per call at batches of one on this CPU, JAX and TensorFlow,
on whichever thread runs the batch; a model on a GPU costs the host its launch only).

Linux only (affinity, /proc). Run by hand; not used by the service or the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtest.bench.cpu_split import threads_cpu
from loadtest.bench.serving import CACHE, standin
from loadtest.common import ROOT, delta
from service.rundir import ENGINE_SOCKET


def _frontend(args: argparse.Namespace) -> None:
    """One synthetic front end: the real client, ``--inflight`` items in a closed loop. Prints
    ``ready`` once the pipeline is, then reads ``start end`` (``time.monotonic()``, one clock
    for every process of the machine) and prints the answers counted between them."""
    import uvloop

    from service.dataplane.engine_client import EngineClient
    from service.settings import Settings

    async def main() -> None:
        client = EngineClient(Settings(), args.socket, index=args.frontend, slots=args.inflight + 8)
        await client.start()
        while not client.info("default").ready:
            await asyncio.sleep(0.05)
        pixels = np.random.default_rng(args.frontend).integers(0, 256, (224, 224, 3), np.uint8)
        counted = 0
        start, end = float("inf"), float("inf")

        async def loop() -> None:
            nonlocal counted
            while (now := time.monotonic()) < end:
                await client.run("default", pixels, now + 30)
                if start <= time.monotonic() < end:
                    counted += 1

        loops = asyncio.gather(*(loop() for _ in range(args.inflight)))
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        start, end = map(float, line.split())
        await loops
        print(json.dumps({"items": counted}), flush=True)
        await client.stop()

    uvloop.run(main())


def _counters(directory: str) -> dict[str, float]:
    """The accelerator process's counters, from prometheus-client's multiprocess files."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, directory)
    out: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            key = sample.name + "".join(f"|{v}" for v in sample.labels.values())
            out[key] = out.get(key, 0.0) + sample.value
    return out


def _roles(threads: dict[str, float]) -> dict[str, float]:
    """Thread CPU by role: the event loop, the runner, the assembly thread, the rest (XLA)."""
    out = {"event_loop": 0.0, "runner": 0.0, "assembly": 0.0, "other": 0.0}
    for name, seconds in threads.items():
        if name.endswith("(main)"):
            out["event_loop"] += seconds
        elif name.startswith("runner"):
            out["runner"] += seconds
        elif name.startswith("assemble"):
            out["assembly"] += seconds
        else:
            out["other"] += seconds
    return out


def measure(batch: int, args: argparse.Namespace, model: Path) -> dict:
    cpus = sorted(os.sched_getaffinity(0))
    engine_cpu, frontend_cpus = cpus[:1], cpus[1:] or cpus[:1]
    buckets = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if b < batch] + [batch]
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as run_dir:
        metrics_dir = Path(run_dir) / "metrics"
        metrics_dir.mkdir()
        env = {
            **os.environ,
            "SERVE_BACKEND": args.backend,
            "SERVE_XLA": "true",  # as make bench-serving runs it (JAX compiles with XLA anyway)
            "SERVE_WEIGHTS": str(model),
            "SERVE_MAX_BATCH_SIZE": str(batch),
            "SERVE_BATCH_BUCKETS": ",".join(map(str, buckets)),
            "SERVE_MAX_QUEUE_IMAGES": str(max(1024, 4 * batch)),
            "SERVE_MODEL_INSTANCES": "1",
            "SERVE_LOG_LEVEL": "warning",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
        profile = ["-m", "cProfile", "-o", str(args.profile)] if args.profile else []
        engine = subprocess.Popen(
            [sys.executable, *profile, "-m", "service.engine.process", "--run-dir", run_dir],
            cwd=ROOT,
            env=env,
            preexec_fn=lambda: os.sched_setaffinity(0, engine_cpu),
        )
        socket = str(Path(run_dir) / ENGINE_SOCKET)
        inflight = max(2, 2 * batch)
        count = args.frontends
        try:
            fronts = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "loadtest.bench.engine",
                        "--frontend",
                        str(i),
                        "--socket",
                        socket,
                        "--inflight",
                        str(-(-inflight // count)),
                    ],
                    cwd=ROOT,
                    env={**env, "PROMETHEUS_MULTIPROC_DIR": ""},
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    preexec_fn=lambda: os.sched_setaffinity(0, frontend_cpus),
                )
                for i in range(count)
            ]
            for front in fronts:  # every front end connected, the pipeline ready
                assert front.stdout is not None and front.stdout.readline().strip() == "ready"
            start = time.monotonic() + args.warmup
            for front in fronts:
                assert front.stdin is not None
                front.stdin.write(f"{start} {start + args.seconds}\n")
                front.stdin.flush()
            time.sleep(max(0.0, start - time.monotonic()))
            cpu0, counters0 = threads_cpu(engine.pid), _counters(str(metrics_dir))
            time.sleep(args.seconds)
            cpu1, counters1 = threads_cpu(engine.pid), _counters(str(metrics_dir))
            items = 0
            for front in fronts:
                out, _ = front.communicate(timeout=120)
                items += json.loads(out.strip().splitlines()[-1])["items"]
        finally:
            engine.terminate()
            engine.wait(60)
    threads = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
    roles = _roles(threads)
    total = sum(roles.values())
    executions = delta(counters1, counters0, "serve_execution_count_total")
    inferred = delta(counters1, counters0, "serve_inference_count_total")
    ahead = delta(counters1, counters0, "serve_batch_assembly_seconds_total|ahead")
    inline = delta(counters1, counters0, "serve_batch_assembly_seconds_total|inline")
    busy = delta(counters1, counters0, "serve_runner_busy_seconds_total")
    return {
        "max_batch": batch,
        "items_per_s": items / args.seconds,
        "mean_batch": inferred / executions if executions else 0.0,
        "engine_cpu_s": total,
        "cpu_us_per_item": 1e6 * total / inferred if inferred else None,
        "cpu_us_per_batch": 1e6 * total / executions if executions else None,
        "by_thread_us_per_item": {
            k: 1e6 * v / inferred if inferred else None for k, v in roles.items()
        },
        # The event loop's thread: messages, tickets, batching, answers, metrics, and the
        # batches it runs itself (SERVE_INLINE_BATCH_MS): their copy and model call.
        "event_loop_us_per_batch": (1e6 * roles["event_loop"] / executions if executions else None),
        # The model's call (serve_runner_busy_seconds_total: wall time of the call, on the one
        # core the process has), and the process's CPU besides it: what a model that cost
        # nothing would leave, the figure issue 22's targets are about.
        "model_us_per_batch": 1e6 * busy / executions if executions else None,
        "besides_model_us_per_batch": (1e6 * (total - busy) / executions if executions else None),
        "runner_compute_s": busy,
        "assembly_ahead_s": ahead,
        "assembly_inline_s": inline,
    }


def split(rows: list[dict], key: str = "cpu_us_per_batch") -> dict:
    """CPU per batch (``key``) = items x per-item + per-batch, fitted over the rows."""
    xs = [r["mean_batch"] for r in rows if r[key]]
    ys = [r[key] for r in rows if r[key]]
    if len(xs) < 2:
        return {}
    per_item, per_batch = np.polyfit(xs, ys, 1)
    return {"us_per_item": float(per_item), "us_per_batch": float(per_batch)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8,32,128")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--frontends", type=int, default=2)
    parser.add_argument("--backend", default="jax")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path, help="cProfile the event loop into this file")
    parser.add_argument("--frontend", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    parser.add_argument("--inflight", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.frontend is not None:
        _frontend(args)
        return 0
    model = standin(CACHE / "standin.keras")
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        row = measure(batch, args, model)
        print(json.dumps(row), flush=True)
        rows.append(row)
    report = {
        "cpus": len(os.sched_getaffinity(0)),
        "rows": rows,
        "fit": split(rows),
        "fit_event_loop": split(rows, "event_loop_us_per_batch"),
        "fit_besides_model": split(rows, "besides_model_us_per_batch"),
    }
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
