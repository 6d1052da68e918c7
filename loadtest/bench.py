"""`make bench`: the model's ceiling vs the service vs the naive design, on one machine.

1. ceiling: the compiled ResNet50 alone on preprocessed batches, best bucket, images/s, with the
   service's own instances and threads and with one instance on TensorFlow's default threads
   (``--also-ceiling``); the ratio is taken against the better of the two;
2. service: `python -m service` over HTTP, 640x480 JPEGs from N concurrent clients;
3. naive: the original tutorial's design (decode in the handler, one model.predict per request);
4. one client alone: service p50 vs the compiled model's single-image time plus decode, the
   model timed in the ceiling's process and, for the same requests, inside the service
   (``timing.inference_ms``): the same call varies by ~20 % from one process to the next.

Run by hand (minutes), never in CI. Prints a table and the ratios; `--json` writes them.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def photo(seed: int, height: int = 480, width: int = 640) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            128 + 100 * np.sin(x / (11 + seed)),
            128 + 100 * np.cos(y / (13 + seed)),
            128 + 60 * np.sin((x + y) / 29),
        ],
        axis=-1,
    )
    pixels = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, path: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready in {timeout}s")


def ceiling(buckets: list[int], seconds: float, instances: int, intra: int, inter: int) -> dict:
    """Images/s of the compiled model alone, per bucket, on already-decoded batches.

    Runs in this process, so call it once per process: TensorFlow's thread pools are fixed at
    the first model. ``instances``/``intra``/``inter`` are the service's settings
    (``SERVE_MODEL_INSTANCES``...; 0: automatic, resolved as the service resolves them): each
    instance runs its own batch of the bucket's size back to back in its own thread, exactly
    as the service's instances would with a queue that never empties.
    """
    from service.model.loader import configure_tensorflow, load_model
    from service.pipeline.runner import ModelRunner

    plan = configure_tensorflow(
        intra_op_threads=intra, inter_op_threads=inter, model_instances=instances
    )
    loaded = load_model("resnet50", "random")
    first = ModelRunner(loaded, buckets)
    first.warmup()
    runners = [first] + [first.sibling() for _ in range(plan.instances - 1)]
    rng = np.random.default_rng(0)
    per_bucket = {}
    for size in buckets:
        batch = rng.integers(0, 255, (size, 224, 224, 3), dtype=np.uint8)
        for runner in runners:
            runner.run(batch)
        per_bucket[size] = _run_together(runners, batch, seconds)
    single = []
    one = rng.integers(0, 255, (1, 224, 224, 3), dtype=np.uint8)
    for _ in range(15):
        t = time.perf_counter()
        first.run(one)
        single.append(time.perf_counter() - t)
    best = max(per_bucket, key=per_bucket.get)
    return {
        "instances": plan.instances,
        "intra_op_threads": plan.intra_op_threads,
        "inter_op_threads": plan.inter_op_threads,
        "per_bucket_images_per_s": {str(k): round(v, 2) for k, v in per_bucket.items()},
        "best_bucket": best,
        "images_per_s": per_bucket[best],
        "single_image_ms": 1000 * statistics.median(single),
    }


def _run_together(runners: list, batch: np.ndarray, seconds: float) -> float:
    """Images/s of ``runners`` each executing ``batch`` back to back in its own thread."""
    counts = [0] * len(runners)
    start = time.perf_counter()

    def work(i: int) -> None:
        while time.perf_counter() - start < seconds or counts[i] < 2:
            runners[i].run(batch)
            counts[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(runners))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) * len(batch) / (time.perf_counter() - start)


def ceiling_in_subprocess(buckets: list[int], seconds: float, config: str) -> dict:
    """:func:`ceiling` in a fresh process (its own TensorFlow thread pools)."""
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--buckets",
            ",".join(map(str, buckets)),
            "--ceiling-seconds",
            str(seconds),
            "--ceiling-only",
            config,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def decode_ms(image: bytes) -> float:
    from service.pipeline.preprocess import PreprocessConfig, decode

    times = []
    for _ in range(30):
        t = time.perf_counter()
        decode(image, PreprocessConfig())
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def load(
    url: str,
    images: list[bytes],
    clients: int,
    seconds: float,
    warmup: float,
    model_ms: list[float] | None = None,
) -> dict:
    """Closed loop: ``clients`` threads posting JPEGs back to back; stats after ``warmup``.

    Requests still running when the window ends are abandoned (their threads finish them).
    With ``model_ms``, each measured answer's ``timing.inference_ms`` (the model's compute
    time inside the service) is appended to it.
    """
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    start = time.monotonic()
    measure_from = start + warmup
    stop_at = measure_from + seconds

    host, port = url.removeprefix("http://").split(":")

    def worker(i: int) -> None:
        # http.client, not httpx: the load generator shares the machine with the server, so it
        # must spend as little CPU per request as possible.
        nonlocal errors
        conn = http.client.HTTPConnection(host, int(port), timeout=300)
        k = i
        while time.monotonic() < stop_at:
            body = images[k % len(images)]
            k += clients
            t0 = time.monotonic()
            try:
                conn.request(
                    "POST", "/v1/classify", body=body, headers={"Content-Type": "image/jpeg"}
                )
                response = conn.getresponse()
                answer = response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=300)
            t1 = time.monotonic()
            # Count what completes inside the window, whenever it started: a slow server
            # whose requests outlast the window still gets its throughput measured.
            if measure_from <= t1 <= stop_at:
                with lock:
                    if ok:
                        latencies.append(t1 - t0)
                        if model_ms is not None:
                            model_ms.append(json.loads(answer)["timing"]["inference_ms"])
                    else:
                        errors += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()

    def pct(p: float) -> float:
        return (
            1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))]
            if latencies
            else float("nan")
        )

    return {
        "clients": clients,
        "seconds": seconds,
        "requests": len(latencies),
        "errors": errors,
        "images_per_s": len(latencies) / seconds,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def scrape_batches(url: str) -> dict:
    text = httpx.get(url + "/metrics").text
    values = {}
    for line in text.splitlines():
        for name in (
            "serve_inference_count_total",
            "serve_execution_count_total",
            "serve_padded_slots_total",
        ):
            if line.startswith(name + " "):
                values[name] = float(line.split()[-1])
    inf, ex = (
        values.get("serve_inference_count_total", 0),
        values.get("serve_execution_count_total", 0),
    )
    return {"mean_batch_size": inf / ex if ex else 0.0, **values}


def run_service(env_extra: dict, fn):
    port = free_port()
    env = {
        **os.environ,
        "SERVE_PORT": str(port),
        "SERVE_MODEL": "resnet50",
        "SERVE_WEIGHTS": "random",
        **env_extra,
    }
    return _serve([sys.executable, "-m", "service"], port, "/readyz", fn, "service", env=env)


def run_naive(fn):
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "loadtest.naive_app:app", "--port", str(port)]
    return _serve([*cmd, "--log-level", "warning"], port, "/docs", fn, "naive")


def _serve(cmd: list[str], port: int, ready_path: str, fn, name: str, env=None):
    """Run a server on ``port`` until it answers ``ready_path``, call ``fn(url)``, stop it."""
    log = open(ROOT / ".cache" / f"bench-{name}-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, ready_path, proc)
        return fn(url)
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--ceiling-seconds", type=float, default=15)
    parser.add_argument("--buckets", default="1,2,4,8,16,32")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument(
        "--threads",
        default="0,0,0",
        help="the service's SERVE_MODEL_INSTANCES,SERVE_INTRA_OP_THREADS,SERVE_INTER_OP_THREADS "
        "(0: automatic); the ceiling is measured with the same",
    )
    parser.add_argument(
        "--also-ceiling",
        default="1,0,0",
        help="another instances,intra,inter to measure the ceiling with (default: one instance "
        "on TensorFlow's default threads); the ratio is taken against the best of all",
    )
    parser.add_argument(
        "--ceiling-only",
        metavar="INSTANCES,INTRA,INTER",
        help="measure only the ceiling with these settings, in this process; print it as JSON",
    )
    args = parser.parse_args(argv)
    (ROOT / ".cache").mkdir(exist_ok=True)
    buckets = [int(b) for b in args.buckets.split(",")]
    if args.ceiling_only:  # one ceiling, in this fresh process, as JSON
        instances, intra, inter = (int(v) for v in args.ceiling_only.split(","))
        print(json.dumps(ceiling(buckets, args.ceiling_seconds, instances, intra, inter)))
        return 0
    images = [photo(seed) for seed in range(8)]

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}"
    )
    configs = [args.threads] + ([args.also_ceiling] if args.also_ceiling else [])
    ceilings = [ceiling_in_subprocess(buckets, args.ceiling_seconds, c) for c in configs]
    own = ceilings[0]  # the service's own configuration: its single-image time
    ceil = max(ceilings, key=lambda c: c["images_per_s"])
    dec = decode_ms(images[0])
    for c in ceilings:
        print(
            f"1. ceiling, {c['instances']} instance(s), intra-op {c['intra_op_threads'] or 'default'}, "
            f"inter-op {c['inter_op_threads'] or 'default'}: {c['images_per_s']:.2f} images/s "
            f"(bucket {c['best_bucket']}); per bucket {c['per_bucket_images_per_s']}; "
            f"single image {c['single_image_ms']:.1f} ms"
        )
    print(f"   ceiling used for the ratio: the best, {ceil['images_per_s']:.2f} images/s")
    print(
        f"   single image (service's configuration): {own['single_image_ms']:.1f} ms model + {dec:.1f} ms decode (640x480 JPEG)"
    )

    instances, intra, inter = args.threads.split(",")
    service_env = {
        "SERVE_BATCH_BUCKETS": args.buckets,
        "SERVE_MAX_BATCH_SIZE": str(max(buckets)),
        "SERVE_MODEL_INSTANCES": instances,
        "SERVE_INTRA_OP_THREADS": intra,
        "SERVE_INTER_OP_THREADS": inter,
    }

    def service_runs(url: str) -> dict:
        model_ms: list[float] = []
        single = load(url, images, 1, min(args.seconds, 30), args.warmup / 2, model_ms)
        single["model_ms_p50"] = statistics.median(model_ms)
        before = scrape_batches(url)
        many = load(url, images, args.clients, args.seconds, args.warmup)
        after = scrape_batches(url)
        inf = after["serve_inference_count_total"] - before["serve_inference_count_total"]
        ex = after["serve_execution_count_total"] - before["serve_execution_count_total"]
        many["mean_batch_size"] = inf / ex if ex else 0.0
        return {"single": single, "loaded": many}

    svc = run_service(service_env, service_runs)
    print(
        f"2. service: {svc['loaded']['images_per_s']:.2f} images/s, p50 {svc['loaded']['p50_ms']:.0f} ms, "
        f"p99 {svc['loaded']['p99_ms']:.0f} ms, errors {svc['loaded']['errors']}, mean batch {svc['loaded']['mean_batch_size']:.1f}"
    )
    naive = None
    if not args.skip_naive:
        naive = run_naive(lambda url: load(url, images, args.clients, args.seconds, args.warmup))
        print(
            f"3. naive: {naive['images_per_s']:.2f} images/s, p50 {naive['p50_ms']:.0f} ms, "
            f"p99 {naive['p99_ms']:.0f} ms, errors {naive['errors']}"
        )
    single_target = own["single_image_ms"] + dec
    in_service = svc["single"]["model_ms_p50"] + dec
    print(
        f"4. one client: service p50 {svc['single']['p50_ms']:.1f} ms vs model+decode "
        f"{single_target:.1f} ms (model timed in the ceiling's process) or {in_service:.1f} ms "
        f"(model timed inside the service, the same requests: {svc['single']['model_ms_p50']:.1f} ms)"
    )
    ratios = {
        "service_over_ceiling": svc["loaded"]["images_per_s"] / ceil["images_per_s"],
        "service_over_naive": (svc["loaded"]["images_per_s"] / naive["images_per_s"])
        if naive
        else None,
        "single_p50_over_model_plus_decode": svc["single"]["p50_ms"] / single_target,
        "single_p50_over_service_model_plus_decode": svc["single"]["p50_ms"] / in_service,
    }
    print("ratios (targets: >= 0.90, >= 3, <= 1.15, <= 1.15):")
    for key, value in ratios.items():
        print(f"   {key}: {value:.3f}" if value is not None else f"   {key}: skipped")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "ceiling": ceil,
                    "ceilings": ceilings,
                    "decode_ms": dec,
                    "service": svc,
                    "naive": naive,
                    "ratios": ratios,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
