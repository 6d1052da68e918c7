"""`make bench`: the model's ceiling vs the service vs the naive design, on one machine.

1. ceiling: the compiled ResNet50 alone on preprocessed batches, images/s, per bucket, with the
   service's own instances and threads and with one instance on TensorFlow's default threads
   (``--also-ceiling``), each in a fresh process: this search picks the best configuration and
   bucket;
2. service: `python -m service` over HTTP, 640x480 JPEGs from N concurrent clients, in paired
   rounds (``--rounds``): the ceiling again (a process kept up, idle in between; the best of
   the search's best buckets), then the service, back to back on the same cores. This VM's
   speed drifts by 10 % and more from one minute to the next, so a ratio of figures taken
   minutes apart mostly measures the drift; the target ratio is the median of the rounds'
   ratios;
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
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from loadtest.bench.ceiling import (  # noqa: E402
    CeilingProcess,
    ceiling,
    ceiling_in_subprocess,
    ceiling_serve,
    paired_summary,
)
from loadtest.common import ROOT, free_port, percentile, scrape, serving  # noqa: E402


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


def decode_ms(image: bytes) -> float:
    from service.preprocess.decode import PreprocessConfig, decode

    times = []
    for _ in range(30):
        t = time.perf_counter()
        decode(image, PreprocessConfig())
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def percentile_ms(sorted_latencies: list[float], q: float) -> float:
    """The ``q`` percentile (0..100) of sorted latencies in seconds, in ms."""
    return 1000 * percentile(sorted_latencies, q)


def load(
    url: str,
    images: list[bytes],
    clients: int,
    seconds: float,
    warmup: float,
    model_ms: list[float] | None = None,
    latencies_out: list[float] | None = None,
) -> dict:
    """Closed loop: ``clients`` threads posting JPEGs back to back; stats after ``warmup``.

    Requests still running when the window ends are abandoned (their threads finish them).
    With ``model_ms``, each measured answer's ``timing.inference_ms`` (the model's compute
    time inside the service) is appended to it; with ``latencies_out``, each measured latency
    (seconds).
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
    if latencies_out is not None:
        latencies_out.extend(latencies)

    return {
        "clients": clients,
        "seconds": seconds,
        "requests": len(latencies),
        "errors": errors,
        "images_per_s": len(latencies) / seconds,
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
    }


def scrape_batches(url: str) -> dict:
    m = scrape(url)
    names = (
        "serve_inference_count_total",
        "serve_execution_count_total",
        "serve_padded_slots_total",
    )
    values = {name: m.get(name, 0.0) for name in names}
    inf, ex = values["serve_inference_count_total"], values["serve_execution_count_total"]
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
    cmd = [sys.executable, "-m", "uvicorn", "loadtest.bench.naive_app:app", "--port", str(port)]
    return _serve([*cmd, "--log-level", "warning"], port, "/docs", fn, "naive")


def _serve(cmd: list[str], port: int, ready_path: str, fn, name: str, env=None):
    """Run a server on ``port`` until it answers ``ready_path``, call ``fn(url)``, stop it."""
    log = ROOT / ".cache" / f"bench-{name}-{port}.log"
    with serving(cmd, port, log, env, ready_path) as (url, _):
        return fn(url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend",
        choices=("tensorflow", "jax"),
        default=os.environ.get("SERVE_BACKEND") or "tensorflow",
        help="the Keras backend of the ceiling, the service and the naive design",
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument(
        "--ceiling-seconds", type=float, default=15, help="per bucket, to find the best one"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=8,
        help="paired rounds: the ceiling (the best of the search's near-best buckets), then "
        "the service under load, alternating; the target ratio is the median of the rounds'",
    )
    parser.add_argument("--round-seconds", type=float, default=15, help="service, per round")
    parser.add_argument(
        "--round-ceiling-seconds",
        type=float,
        default=8,
        help="ceiling, per round and bucket (the search's best and those within 10 %% of it)",
    )
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
    parser.add_argument(
        "--ceiling-serve",
        metavar="INSTANCES,INTRA,INTER",
        help="(internal) a ceiling process that answers 'SIZE SECONDS' lines on stdin",
    )
    args = parser.parse_args(argv)
    from service.model.backends import select

    select(args.backend)  # before Keras is imported; the processes started below inherit it
    os.environ["SERVE_BACKEND"] = args.backend
    (ROOT / ".cache").mkdir(exist_ok=True)
    buckets = [int(b) for b in args.buckets.split(",")]
    if args.ceiling_only:  # one ceiling, in this fresh process, as JSON
        instances, intra, inter = (int(v) for v in args.ceiling_only.split(","))
        print(json.dumps(ceiling(buckets, args.ceiling_seconds, instances, intra, inter)))
        return 0
    if args.ceiling_serve:
        instances, intra, inter = (int(v) for v in args.ceiling_serve.split(","))
        ceiling_serve(buckets, instances, intra, inter)
        return 0
    images = [photo(seed) for seed in range(8)]

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}"
        f", backend {args.backend}"
    )
    configs = [args.threads] + ([args.also_ceiling] if args.also_ceiling else [])
    ceilings = [ceiling_in_subprocess(buckets, args.ceiling_seconds, c) for c in configs]
    own = ceilings[0]  # the service's own configuration: its single-image time
    best = max(range(len(configs)), key=lambda i: ceilings[i]["images_per_s"])
    ceil = ceilings[best]
    dec = decode_ms(images[0])
    for c in ceilings:
        print(
            f"1. ceiling, {c['instances']} instance(s), intra-op {c['intra_op_threads'] or 'default'}, "
            f"inter-op {c['inter_op_threads'] or 'default'}: {c['images_per_s']:.2f} images/s "
            f"(bucket {c['best_bucket']}); per bucket {c['per_bucket_images_per_s']}; "
            f"single image {c['single_image_ms']:.1f} ms"
        )
    print(
        f"   the best: {ceil['images_per_s']:.2f} images/s ({configs[best]}, bucket "
        f"{ceil['best_bucket']}), measured again between the service's rounds"
    )
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

    candidates = [
        int(b)
        for b, rate in ceil["per_bucket_images_per_s"].items()
        if rate >= 0.9 * ceil["images_per_s"]
    ]
    print(
        f"   starting the ceiling process for the paired rounds ({configs[best]}, buckets "
        f"{candidates})",
        flush=True,
    )
    ceiling_proc = CeilingProcess(candidates, configs[best])

    def service_runs(url: str) -> dict:
        model_ms: list[float] = []
        single = load(url, images, 1, min(args.seconds, 30), args.warmup / 2, model_ms)
        single["model_ms_p50"] = statistics.median(model_ms)
        load(url, images, args.clients, args.warmup, 0)  # the loaded steady state
        before = scrape_batches(url)
        rounds, latencies, errors = [], [], 0
        for r in range(args.rounds):
            # Back to back on the same cores (the other process idles meanwhile): each pair
            # sees the machine in the same minute, whatever the neighbours on the host do.
            per_bucket = ceiling_proc.measure(args.round_ceiling_seconds)
            c = max(per_bucket.values())
            s = load(url, images, args.clients, args.round_seconds, 3, latencies_out=latencies)
            errors += s["errors"]
            rounds.append(
                {
                    "ceiling_images_per_s": c,
                    "ceiling_per_bucket": per_bucket,
                    "service_images_per_s": s["images_per_s"],
                    "service_p50_ms": s["p50_ms"],
                    "service_p99_ms": s["p99_ms"],
                }
            )
            print(
                f"   round {r + 1}: ceiling {c:.2f} (per bucket "
                f"{ {b: round(v, 2) for b, v in per_bucket.items()} }), service {s['images_per_s']:.2f} images/s "
                f"(p99 {s['p99_ms']:.0f} ms): {s['images_per_s'] / c:.3f}",
                flush=True,
            )
        after = scrape_batches(url)
        inf = after["serve_inference_count_total"] - before["serve_inference_count_total"]
        ex = after["serve_execution_count_total"] - before["serve_execution_count_total"]
        latencies.sort()
        if not latencies:
            raise RuntimeError(f"the service answered no request in the rounds ({errors} errors)")
        measured_s = args.rounds * args.round_seconds
        many = {
            "clients": args.clients,
            "seconds": measured_s,
            "requests": len(latencies),
            "errors": errors,
            "images_per_s": len(latencies) / measured_s,
            "p50_ms": percentile_ms(latencies, 50),
            "p99_ms": percentile_ms(latencies, 99),
            "mean_batch_size": inf / ex if ex else 0.0,
        }
        return {"single": single, "loaded": many, "rounds": rounds}

    try:
        svc = run_service(service_env, service_runs)
    finally:
        ceiling_proc.close()
    paired = paired_summary(svc["rounds"])
    print(
        f"2. service: {svc['loaded']['images_per_s']:.2f} images/s, p50 {svc['loaded']['p50_ms']:.0f} ms, "
        f"p99 {svc['loaded']['p99_ms']:.0f} ms, errors {svc['loaded']['errors']}, mean batch {svc['loaded']['mean_batch_size']:.1f}"
    )
    print(
        f"   paired rounds: service / ceiling {paired['ratios']}, median {paired['median']:.3f} "
        f"(ceiling median {paired['ceiling_median']:.2f} images/s)"
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
        "service_over_ceiling": paired["median"],
        "service_over_ceiling_min": paired["min"],
        # The earlier definition: all rounds of the service against the best bucket's figure
        # from the search, minutes earlier (the highest of six noisy figures: biased high).
        "service_over_search_ceiling": svc["loaded"]["images_per_s"] / ceil["images_per_s"],
        "service_over_naive": (svc["loaded"]["images_per_s"] / naive["images_per_s"])
        if naive
        else None,
        "single_p50_over_model_plus_decode": svc["single"]["p50_ms"] / single_target,
        "single_p50_over_service_model_plus_decode": svc["single"]["p50_ms"] / in_service,
    }
    print("ratios (targets: service_over_ceiling >= 0.90, over naive >= 3, single <= 1.15):")
    for key, value in ratios.items():
        print(f"   {key}: {value:.3f}" if value is not None else f"   {key}: skipped")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "backend": args.backend,
                    "ceiling": ceil,
                    "ceilings": ceilings,
                    "paired": paired,
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
