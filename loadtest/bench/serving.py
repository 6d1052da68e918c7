"""`make bench-serving`: how much of what the cores can decode the service delivers, run by hand.

    python -m loadtest.bench.serving [--rounds 3] [--seconds 10] [--connections 32]

On one machine, in paired rounds (this VM's speed drifts from one minute to the next, so each
ratio compares figures taken back to back):

1. the decode ceiling: one process per core decoding the benchmark JPEG (640x480) to 224x224,
   as fast as it can, images/s;
2. the service (``python -m service``, all its front ends) with a stand-in model that costs
   almost nothing (a real Keras model with ResNet50's input and a 1000-way softmax, compiled
   with XLA, which reads an 8x8 corner: its per-image cost is printed), under a closed-loop
   load of one JPEG per request, top 5 classes back, on each path in turn:

   * ``http``: ``POST /v1/classify`` (raw image), from ``wrk`` (Debian's package);
   * ``v2-http``: KServe V2 ``infer`` with the image as binary tensor data, from ``wrk``;
   * ``grpc``: KServe V2 ``ModelInfer`` with the image in ``raw_input_contents``, from
     ``h2load`` (Debian's nghttp2-client: gRPC is HTTP/2 POSTs of length-prefixed messages;
     it cannot read gRPC statuses, so every call is also counted from the service's metrics);
   * ``grpc-stream``: the same requests on ``ModelStreamInfer`` streams, :data:`STREAM_DEPTH`
     per stream (h2load sends them in one body and waits for the stream's end), over a
     :data:`STREAM_DEPTH`-th of the connections: as many images in flight as on the others;

   images/s, p50/p99, the CPU seconds per image of every process of the service and of the
   load generator (a few µs per request);
3. the same (``http`` path) with the service pinned to 1 core, then to 2 (``taskset``; the load
   generator on a core of its own where there is one), for the scaling ratio.

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
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from loadtest.common import (
    ROOT,
    cpu_seconds,
    delta,
    free_port,
    percentile,
    process_tree,
    scrape,
    serving,
)

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


ROLES = ("front_ends", "accelerator", "supervisor")


def cpu_by_role(pid: int) -> dict[str, float]:
    """CPU seconds so far of the service's processes: the front ends, the accelerator process
    (with any cpu-stage workers it started) and the supervisor, told apart by their command
    lines (server/supervisor.py starts them as ``-m service.server.frontend`` and
    ``-m service.engine.process``); and, as ``accelerator_loop``, the accelerator process's
    main thread alone (its event loop), which the rest of ``accelerator`` runs beside."""
    import psutil

    root = psutil.Process(pid)
    seconds = dict.fromkeys((*ROLES, "accelerator_loop"), 0.0)
    seconds["supervisor"] += cpu_seconds(root) or 0.0
    for child in root.children():
        try:
            command = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        role = "supervisor"
        if "service.engine" in command:
            role = "accelerator"
            try:
                loop = [t for t in child.threads() if t.id == child.pid]
                seconds["accelerator_loop"] += sum(t.user_time + t.system_time for t in loop)
            except psutil.NoSuchProcess:
                pass
        elif "service.server.frontend" in command:
            role = "front_ends"
        seconds[role] += sum(cpu_seconds(p) or 0.0 for p in process_tree(child.pid))
    return seconds


def wrk(url: str, body: Body, connections: int, seconds: float, cpus: list[int] | None) -> dict:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(LUA)]
    cmd += [url + body.path, "--", str(body.file), body.content_type, *body.header]
    start = os.times()
    out = _run(cmd, cpus)
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


def h2load(
    address: str, body: Body, connections: int, seconds: float, cpus: list[int] | None
) -> dict:
    """gRPC calls as h2load's HTTP/2 POSTs, one call at a time per connection (a stream's
    latency is that of its last answer)."""
    log = CACHE / "h2load.log"
    log.unlink(missing_ok=True)  # h2load appends to its log file: this run's calls only
    cmd = ["h2load", "-t1", f"-c{connections}", "-m1", f"-D{seconds:g}", "-d", str(body.file)]
    cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers", "--log-file", str(log)]
    cmd += [f"http://{address}{body.path}"]
    start = os.times()
    out = _run(cmd, cpus)
    end = os.times()
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
    # --log-file: one line per call: start (µs since epoch), HTTP status, duration (µs).
    durations = sorted(int(line.split()[2]) / 1000 for line in log.read_text().splitlines())
    return {
        "images_per_s": done * body.messages / seconds,
        "p50_ms": percentile(durations, 50),
        "p99_ms": percentile(durations, 99),
        "non_2xx": 0,  # gRPC statuses travel in trailers: counted from the metrics instead
        "loadgen_cpu_s": (end.children_user + end.children_system)
        - (start.children_user + start.children_system),
    }


def _run(cmd: list[str], cpus: list[int] | None) -> str:
    if cpus:
        cmd = ["taskset", "-c", ",".join(map(str, cpus)), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1000.0}[unit]


@dataclass(frozen=True)
class Body:
    """One request of a path: where it goes and what it sends."""

    path: str
    file: Path
    content_type: str = "image/jpeg"
    header: tuple[str, ...] = ()
    # Requests (of one image each) that one request of the load generator carries.
    messages: int = 1


def bodies(image: Path, model: str) -> dict[str, Body]:
    """The request of each path: one JPEG, top 5 classes back."""
    import struct

    from service.grpc.generated import grpc_service_pb2 as pb

    data = image.read_bytes()
    element = struct.pack("<I", len(data)) + data
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(element)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 5}}],
        }
    ).encode()
    v2 = CACHE / "bench-serving-v2.bin"
    v2.write_bytes(header + element)
    request = pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[1])],
        raw_input_contents=[element],
    )
    output = request.outputs.add(name="probabilities")
    output.parameters["classification"].int64_param = 5
    message = request.SerializeToString()
    framed = b"\0" + struct.pack(">I", len(message)) + message  # gRPC's framing
    grpc_file = CACHE / "bench-serving-grpc.bin"
    grpc_file.write_bytes(framed)
    stream_file = CACHE / "bench-serving-grpc-stream.bin"
    stream_file.write_bytes(framed * STREAM_DEPTH)
    return {
        "http": Body("/v1/classify", image),
        "v2-http": Body(
            f"/v2/models/{model}/infer",
            v2,
            "application/octet-stream",
            ("Inference-Header-Content-Length", str(len(header))),
        ),
        "grpc": Body("/inference.GRPCInferenceService/ModelInfer", grpc_file),
        "grpc-stream": Body(
            "/inference.GRPCInferenceService/ModelStreamInfer", stream_file, messages=STREAM_DEPTH
        ),
    }


# What a load generator that stops at the end of a round leaves: calls cut off in flight.
# h2load closes its connections then, and a call whose headers had arrived but whose message
# had not is counted under missing_message (docs/PROTOCOLS.md).
CUT_OFF = ('reason="cancelled"', 'reason="missing_message"')


def _answered(metrics: dict, protocol: str) -> tuple[float, float]:
    """(answered, failed other than cut off by the load's end) inference calls of
    ``protocol`` so far."""
    ok = failed = 0.0
    for key, value in metrics.items():
        if f'protocol="{protocol}"' not in key:
            continue
        if key.startswith("serve_request_success_total"):
            ok += value
        elif key.startswith("serve_request_failure_total") and not any(c in key for c in CUT_OFF):
            failed += value
    return ok, failed


def service_round(url, grpc_address, pid, body: Body, path, args, loadgen_cpus) -> dict:  # type: ignore[no-untyped-def]
    run = h2load if path.startswith("grpc") else wrk
    target = grpc_address if path.startswith("grpc") else url
    protocol = "grpc" if path.startswith("grpc") else "http"
    connections = max(1, args.connections // body.messages)
    run(target, body, connections, 3, loadgen_cpus)  # warm (connections, batch sizes)
    before_cpu, before = cpu_by_role(pid), scrape(url)
    result = run(target, body, connections, args.seconds, loadgen_cpus)
    after, after_cpu = scrape(url), cpu_by_role(pid)
    images = result["images_per_s"] * args.seconds
    executions = delta(after, before, "serve_execution_count_total")
    inferred = delta(after, before, "serve_inference_count_total")
    ok_before, failed_before = _answered(before, protocol)
    ok_after, failed_after = _answered(after, protocol)
    result["answered"] = ok_after - ok_before
    result["failed"] = failed_after - failed_before
    for role in after_cpu:
        spent = after_cpu[role] - before_cpu[role]
        result[f"{role}_cpu_ms_per_image"] = 1000 * spent / max(images, 1)
    result["service_cpu_ms_per_image"] = sum(result[f"{r}_cpu_ms_per_image"] for r in ROLES)
    result["loadgen_cpu_ms_per_image"] = 1000 * result.pop("loadgen_cpu_s") / max(images, 1)
    result["mean_batch"] = inferred / executions if executions else 0.0
    result["runner_busy_ratio"] = after.get("serve_runner_busy_ratio", 0.0)
    return result


def measure(cpus: list[int], args, image: Path, model: Path, paths: list[str]) -> dict:  # type: ignore[no-untyped-def]
    """Paired rounds on ``cpus``: the decode ceiling, then the service on each path, back to
    back."""
    others = [c for c in sorted(os.sched_getaffinity(0)) if c not in cpus]
    loadgen = others[:1] or None  # a core of its own, where the machine has one to spare
    port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "SERVE_PORT": str(port),
        "SERVE_GRPC_PORT": str(grpc_port),
        "SERVE_WEIGHTS": str(model),
        "SERVE_XLA": "true",
        "SERVE_LOG_LEVEL": "warning",
        **dict(kv.split("=", 1) for kv in args.env),
    }
    cmd = ["taskset", "-c", ",".join(map(str, cpus)), sys.executable, "-m", "service"]
    rounds = []
    log = CACHE / f"bench-serving-{len(cpus)}cpu.log"
    with serving(cmd, port, log, env) as (url, proc):
        name = json.loads(urllib.request.urlopen(url + "/v1/models").read())["models"][0]["name"]
        requests = bodies(image, name)
        for _ in range(args.rounds):
            ceiling = decode_ceiling(image, cpus, args.ceiling_seconds)
            each = {}
            for path in paths:
                address = f"127.0.0.1:{grpc_port}"
                each[path] = service_round(
                    url, address, proc.pid, requests[path], path, args, loadgen
                )
            rounds.append({"decode_ceiling_images_per_s": ceiling, "paths": each})
    out: dict = {
        "cpus": cpus,
        "loadgen_cpus": loadgen or "shared",
        "rounds": rounds,
        "decode_ceiling_images_per_s": statistics.median(
            r["decode_ceiling_images_per_s"] for r in rounds
        ),
    }
    for path in paths:

        def median(key: str, path: str = path) -> float:
            return statistics.median(r["paths"][path][key] for r in rounds)

        ratio = statistics.median(
            r["paths"][path]["images_per_s"] / r["decode_ceiling_images_per_s"] for r in rounds
        )
        out[path] = {
            "images_per_s": median("images_per_s"),
            "service_over_ceiling": ratio,
            **{
                k: median(k)
                for k in (
                    "p50_ms",
                    "p99_ms",
                    "service_cpu_ms_per_image",
                    *(f"{r}_cpu_ms_per_image" for r in (*ROLES, "accelerator_loop")),
                    "loadgen_cpu_ms_per_image",
                    "mean_batch",
                    "answered",
                    "failed",
                )
            },
        }
    return out


PATHS = ("http", "v2-http", "grpc", "grpc-stream")
# Requests per stream on the grpc-stream path.
STREAM_DEPTH = 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10, help="load per round")
    parser.add_argument("--ceiling-seconds", type=float, default=5, help="decode per round")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)}"
    )
    parser.add_argument("--no-scaling", action="store_true", help="skip the 1- and 2-core runs")
    parser.add_argument("--json", default="", help="also write the figures here")
    parser.add_argument("env", nargs="*", help="SERVE_*=value overrides for the service")
    args = parser.parse_args(argv)
    paths = [p for p in args.paths.split(",") if p]
    if not set(paths) <= set(PATHS):
        parser.error(f"--paths: unknown {sorted(set(paths) - set(PATHS))}")
    for tool, package in (("wrk", "wrk"), ("h2load", "nghttp2-client")):
        if shutil.which(tool) is None and (
            tool == "wrk" or any(p.startswith("grpc") for p in paths)
        ):
            parser.error(f"{tool} is not installed (Debian's package: apt-get install {package})")
    image = jpeg(CACHE / "bench-serving.jpg")
    model = standin(CACHE / "standin.keras")
    cpus = sorted(os.sched_getaffinity(0))
    report: dict = {"machine": {"cpus": len(cpus), "platform": platform.platform()}}
    report["all_cores"] = measure(cpus, args, image, model, paths)
    if not args.no_scaling and len(cpus) >= 2:
        report["one_core"] = measure(cpus[:1], args, image, model, ["http"])
        report["two_cores"] = measure(cpus[:2], args, image, model, ["http"])
        report["two_over_one"] = (
            report["two_cores"]["http"]["images_per_s"] / report["one_core"]["http"]["images_per_s"]
        )
    for key in ("all_cores", "one_core", "two_cores"):
        if key not in report:
            continue
        r = report[key]
        print(f"{key}: cpus={r['cpus']}, decode ceiling {r['decode_ceiling_images_per_s']:.0f}/s")
        for path in PATHS:
            if path in r:
                p = r[path]
                print(
                    f"  {path:11s} {p['images_per_s']:.0f}/s (ratio {p['service_over_ceiling']:.3f}"
                    f", p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms), service CPU "
                    f"{p['service_cpu_ms_per_image']:.2f} ms/image (front ends "
                    f"{p['front_ends_cpu_ms_per_image']:.2f}, accelerator process "
                    f"{p['accelerator_cpu_ms_per_image']:.2f}, of it its event loop "
                    f"{p['accelerator_loop_cpu_ms_per_image']:.2f}), load generator "
                    f"{p['loadgen_cpu_ms_per_image']:.3f} ms/image, mean batch "
                    f"{p['mean_batch']:.2f}, failed {p['failed']:.0f}"
                )
    if "two_over_one" in report:
        print(f"2 cores / 1 core (http): {report['two_over_one']:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
