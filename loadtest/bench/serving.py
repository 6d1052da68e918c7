"""`make bench-serving`: how much of what the cores can decode the service delivers, run by hand.

    python -m loadtest.bench.serving [--rounds 3] [--seconds 10] [--connections 32]

On one machine, in paired rounds (this VM's speed drifts from one minute to the next, so each
ratio compares figures taken back to back):

1. the decode ceiling: one process per core decoding the benchmark JPEG (640x480) to 224x224,
   as fast as it can, images/s;
2. the service (``python -m service``, all its front ends) with a stand-in model that costs
   almost nothing (a real Keras model with ResNet50's input and a 1000-way softmax, compiled
   with XLA, which reads an 8x8 corner: its per-image cost is printed), under a closed-loop
   load from ``wrk`` (Debian's package, a few µs of CPU per request): images/s, p50/p99, the
   CPU seconds per image of every process of the service and of wrk;
3. the same with the service pinned to 1 core, then to 2 (``taskset``; the load generator on
   a core of its own where there is one), for the scaling ratio.

Never run in CI. Prints a table; ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from loadtest.common import ROOT, free_port, scrape, serving

CACHE = ROOT / ".cache"
LUA = Path(__file__).with_name("post.lua")


def standin(path: Path) -> Path:
    """The stand-in model: ResNet50's input and output, and almost no work between them."""
    if path.exists():
        return path
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    inputs = keras.Input((224, 224, 3))
    x = keras.layers.Cropping2D(((0, 216), (0, 216)))(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(1000, activation="softmax")(x)
    path.parent.mkdir(parents=True, exist_ok=True)
    keras.Model(inputs, outputs, name="standin").save(path)
    return path


def jpeg(path: Path) -> Path:
    from loadtest.bench.resnet import photo

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(photo(0))
    return path


def _decode_loop(image: str, seconds: float, cpu: int | None, out) -> None:  # type: ignore[no-untyped-def]
    from service.preprocess.decode import PreprocessConfig, decode

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    data = Path(image).read_bytes()
    cfg = PreprocessConfig(size=(224, 224))
    for _ in range(20):
        decode(data, cfg)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        decode(data, cfg)
        n += 1
    out.put(n / (time.perf_counter() - start))


def decode_ceiling(image: Path, cpus: list[int], seconds: float) -> float:
    """Images/s of one decoding process per core of ``cpus``, all at once."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_decode_loop, args=(str(image), seconds, c, out)) for c in cpus]
    for p in procs:
        p.start()
    rates = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def _tree_cpu(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def wrk(url: str, image: Path, connections: int, seconds: float, cpus: list[int] | None) -> dict:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(LUA)]
    cmd += [url + "/v1/classify", "--", str(image)]
    if cpus:
        cmd = ["taskset", "-c", ",".join(map(str, cpus)), *cmd]
    start = os.times()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    end = os.times()
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "images_per_s": rate,
        "p50_ms": _ms(re.search(r"\s50%\s+([\d.]+\w+)", out).group(1)),
        "p99_ms": _ms(re.search(r"\s99%\s+([\d.]+\w+)", out).group(1)),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "loadgen_cpu_s": (end.children_user + end.children_system)
        - (start.children_user + start.children_system),
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1000.0}[unit]


def service_round(url: str, pid: int, image: Path, args, loadgen_cpus) -> dict:  # type: ignore[no-untyped-def]
    wrk(url, image, args.connections, 3, loadgen_cpus)  # warm (connections, batch sizes)
    before_cpu, before = _tree_cpu(pid), scrape(url)
    result = wrk(url, image, args.connections, args.seconds, loadgen_cpus)
    after, after_cpu = scrape(url), _tree_cpu(pid)
    images = result["images_per_s"] * args.seconds
    executions = after.get("serve_execution_count_total", 0) - before.get(
        "serve_execution_count_total", 0
    )
    inferred = after.get("serve_inference_count_total", 0) - before.get(
        "serve_inference_count_total", 0
    )
    result["service_cpu_ms_per_image"] = 1000 * (after_cpu - before_cpu) / max(images, 1)
    result["loadgen_cpu_ms_per_image"] = 1000 * result.pop("loadgen_cpu_s") / max(images, 1)
    result["mean_batch"] = inferred / executions if executions else 0.0
    result["runner_busy_ratio"] = after.get("serve_runner_busy_ratio", 0.0)
    return result


def measure(cpus: list[int], args, image: Path, model: Path) -> dict:  # type: ignore[no-untyped-def]
    """Paired rounds on ``cpus``: the decode ceiling, then the service, back to back."""
    others = [c for c in sorted(os.sched_getaffinity(0)) if c not in cpus]
    loadgen = others[:1] or None  # a core of its own, where the machine has one to spare
    port = free_port()
    env = {
        **os.environ,
        "SERVE_PORT": str(port),
        "SERVE_WEIGHTS": str(model),
        "SERVE_XLA": "true",
        "SERVE_LOG_LEVEL": "warning",
        **dict(kv.split("=", 1) for kv in args.env),
    }
    cmd = ["taskset", "-c", ",".join(map(str, cpus)), sys.executable, "-m", "service"]
    rounds = []
    log = CACHE / f"bench-serving-{len(cpus)}cpu.log"
    with serving(cmd, port, log, env) as (url, proc):
        for _ in range(args.rounds):
            ceiling = decode_ceiling(image, cpus, args.ceiling_seconds)
            service = service_round(url, proc.pid, image, args, loadgen)
            rounds.append({"decode_ceiling_images_per_s": ceiling, **service})
    ratio = [r["images_per_s"] / r["decode_ceiling_images_per_s"] for r in rounds]

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    return {
        "cpus": cpus,
        "loadgen_cpus": loadgen or "shared",
        "rounds": rounds,
        "images_per_s": median("images_per_s"),
        "decode_ceiling_images_per_s": median("decode_ceiling_images_per_s"),
        "service_over_ceiling": statistics.median(ratio),
        "p50_ms": median("p50_ms"),
        "p99_ms": median("p99_ms"),
        "service_cpu_ms_per_image": median("service_cpu_ms_per_image"),
        "loadgen_cpu_ms_per_image": median("loadgen_cpu_ms_per_image"),
        "mean_batch": median("mean_batch"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10, help="load per round")
    parser.add_argument("--ceiling-seconds", type=float, default=5, help="decode per round")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--no-scaling", action="store_true", help="skip the 1- and 2-core runs")
    parser.add_argument("--json", default="", help="also write the figures here")
    parser.add_argument("env", nargs="*", help="SERVE_*=value overrides for the service")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian's package: apt-get install wrk)")
    image = jpeg(CACHE / "bench-serving.jpg")
    model = standin(CACHE / "standin.keras")
    cpus = sorted(os.sched_getaffinity(0))
    report: dict = {"machine": {"cpus": len(cpus), "platform": platform.platform()}}
    report["all_cores"] = measure(cpus, args, image, model)
    if not args.no_scaling and len(cpus) >= 2:
        report["one_core"] = measure(cpus[:1], args, image, model)
        report["two_cores"] = measure(cpus[:2], args, image, model)
        report["two_over_one"] = (
            report["two_cores"]["images_per_s"] / report["one_core"]["images_per_s"]
        )
    for key in ("all_cores", "one_core", "two_cores"):
        if key in report:
            r = report[key]
            print(
                f"{key:10s} cpus={r['cpus']} service {r['images_per_s']:.0f}/s "
                f"(p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms), decode ceiling "
                f"{r['decode_ceiling_images_per_s']:.0f}/s, ratio {r['service_over_ceiling']:.3f}"
                f", service CPU {r['service_cpu_ms_per_image']:.2f} ms/image, wrk "
                f"{r['loadgen_cpu_ms_per_image']:.3f} ms/image, mean batch {r['mean_batch']:.2f}"
            )
    if "two_over_one" in report:
        print(f"2 cores / 1 core: {report['two_over_one']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
