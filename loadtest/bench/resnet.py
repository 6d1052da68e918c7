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
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from loadtest.common import free_port, percentile, scrape, serving  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


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


def _ceiling_runners(buckets: list[int], instances: int, intra: int, inter: int):
    """The service's runners in this process: the backend's configuration, one per-shape
    warm-up.

    Call it once per process: TensorFlow's thread pools are fixed at the first model, and Keras
    reads its backend (``KERAS_BACKEND``, set by ``--backend``) at its first import.
    ``instances``/``intra``/``inter`` are the service's settings (``SERVE_MODEL_INSTANCES``...;
    0: automatic, resolved as the service resolves them).
    """
    from service.model.backends import configure
    from service.model.loader import load_model
    from service.model.runner import make_runner
    from service.model.threads import plan_threads
    from service.settings import Settings

    settings = Settings(model_instances=instances, intra_op_threads=intra, inter_op_threads=inter)
    configure(settings)
    plan = plan_threads(
        instances=instances,
        intra_op_threads=intra,
        inter_op_threads=inter,
        gpu=False,
        cpus=settings.cpu_count,
    )
    loaded = load_model("resnet50", "random")
    first = make_runner(loaded, buckets)
    first.warmup()
    return plan, [first] + [first.sibling() for _ in range(plan.instances - 1)]


def _bucket_rate(runners: list, size: int, seconds: float) -> float:
    """Images/s of every instance running batches of ``size`` back to back (after one each)."""
    batch = np.random.default_rng(size).integers(0, 255, (size, 224, 224, 3), dtype=np.uint8)
    for runner in runners:
        runner.run(batch)
    return _run_together(runners, batch, seconds)


def ceiling(buckets: list[int], seconds: float, instances: int, intra: int, inter: int) -> dict:
    """Images/s of the compiled model alone, per bucket, on already-decoded batches.

    Each instance runs its own batch of the bucket's size back to back in its own thread,
    exactly as the service's instances would with a queue that never empties.
    """
    plan, runners = _ceiling_runners(buckets, instances, intra, inter)
    per_bucket = {size: _bucket_rate(runners, size, seconds) for size in buckets}
    single = []
    one = np.random.default_rng(0).integers(0, 255, (1, 224, 224, 3), dtype=np.uint8)
    for _ in range(15):
        t = time.perf_counter()
        runners[0].run(one)
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


def ceiling_serve(buckets: list[int], instances: int, intra: int, inter: int) -> None:
    """``--ceiling-serve``: build the runners once, then answer ``SIZE SECONDS`` lines on
    stdin with one JSON line each (images/s at that bucket) until stdin closes. Idle between
    requests (blocked on stdin), so the service can be measured in between on the same cores."""
    plan, runners = _ceiling_runners(buckets, instances, intra, inter)
    print(json.dumps({"ready": True, "instances": plan.instances}), flush=True)
    for line in sys.stdin:
        size, seconds = line.split()
        rate = _bucket_rate(runners, int(size), float(seconds))
        print(json.dumps({"images_per_s": rate}), flush=True)


def _self_command(buckets: list[int], *args: str) -> list[str]:
    """This script in a fresh process (its own TensorFlow thread pools)."""
    return [
        sys.executable,
        "-m",
        "loadtest.bench.resnet",
        "--buckets",
        ",".join(map(str, buckets)),
        *args,
    ]


class CeilingProcess:
    """A ``--ceiling-serve`` process: the ceiling measured again and again, between rounds of
    the service, so that each service figure has a ceiling figure from the same minute.

    It measures every one of ``buckets`` (the search's best and those within 10 % of it: one
    noisy search cannot tell them apart) each time, and the round's ceiling is the best of them.
    """

    def __init__(self, buckets: list[int], config: str):
        self.buckets = buckets
        self.proc = subprocess.Popen(
            _self_command(buckets, "--ceiling-serve", config),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._read()  # the ready line: the model is built and warmed

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the ceiling process exited with {self.proc.wait()}")
        return json.loads(line)

    def measure(self, seconds: float) -> dict[int, float]:
        """Images/s at each bucket, ``seconds`` each."""
        assert self.proc.stdin is not None
        rates = {}
        for bucket in self.buckets:
            self.proc.stdin.write(f"{bucket} {seconds}\n")
            self.proc.stdin.flush()
            rates[bucket] = self._read()["images_per_s"]
        return rates

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(60)


def paired_summary(rounds: list[dict]) -> dict:
    """Per-round ratios service / ceiling (each pair measured back to back) and their median,
    lowest and highest."""
    ratios = [r["service_images_per_s"] / r["ceiling_images_per_s"] for r in rounds]
    return {
        "ratios": [round(x, 4) for x in ratios],
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "ceiling_median": statistics.median(r["ceiling_images_per_s"] for r in rounds),
        "service_median": statistics.median(r["service_images_per_s"] for r in rounds),
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
        _self_command(buckets, "--ceiling-seconds", str(seconds), "--ceiling-only", config),
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


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
