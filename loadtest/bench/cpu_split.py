"""Where the CPU goes under load, run by hand: the service (with SERVE_* overrides) under a
closed-loop JPEG load, its images/s, batch sizes, how busy the runner instances were, how long
images waited in the batcher, and CPU seconds per image split into the server's threads (the
main thread is the event loop; TensorFlow's are ``tf_Compute`` or unnamed ``python`` threads),
its preprocessing workers, and this load generator.

    python -m loadtest.bench.cpu_split [--seconds 20] [--clients 16] [SERVE_MODEL_INSTANCES=1 ...]

Linux only (reads /proc). The figures in docs/BENCHMARKS.md that compare instance counts and
thread settings were taken with it. Not used by the service or the tests.
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import sys
import time
import urllib.request

from loadtest.bench import resnet as bench
from loadtest.common import samples

TICK = os.sysconf("SC_CLK_TCK")


def _stat(path: str) -> list[str]:
    with open(path) as f:
        return f.read().rsplit(")", 1)[1].split()


def threads_cpu(pid: int) -> collections.Counter:
    """CPU seconds of each thread of ``pid`` by thread name (digits stripped)."""
    out: collections.Counter = collections.Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip().rstrip("0123456789-_")
            fields = _stat(f"/proc/{pid}/task/{tid}/stat")
        except OSError:  # the thread ended
            continue
        name += " (main)" if tid == str(pid) else ""
        out[name] += (int(fields[11]) + int(fields[12])) / TICK
    return out


def children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat(f"/proc/{entry}/stat")[1]) == pid:
                    kids.append(int(entry))
            except OSError:
                continue
    return kids


def snapshot(server: int) -> dict[str, collections.Counter]:
    workers: collections.Counter = collections.Counter()
    for kid in children(server):
        workers["all workers"] += sum(threads_cpu(kid).values())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "server": threads_cpu(server),
        "workers": workers,
        "loadgen": collections.Counter({"all threads": usage.ru_utime + usage.ru_stime}),
    }


SCALARS = (
    "serve_runner_busy_seconds_total",
    "serve_queue_duration_seconds_sum",
    "serve_queue_duration_seconds_count",
)


def scrape(url: str) -> tuple[dict[str, float], dict[str, float]]:
    """The batch-size histogram (by ``le``) and the scalars above, from ``/metrics``."""
    histogram, scalars = {}, {}
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    for name, labels, value in samples(text):
        if name == "serve_batch_size_bucket":
            histogram[labels["le"]] = value
        elif name == "serve_model_instances" and labels.get("stage") == "model":
            scalars["instances"] = value
        elif name in SCALARS:
            scalars[name] = value
    return histogram, scalars


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("env", nargs="*", help="SERVE_...=value overrides for the service")
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    images = [bench.photo(seed) for seed in range(8)]
    (bench.ROOT / ".cache").mkdir(exist_ok=True)

    def measure(url: str) -> None:
        (server,) = children(os.getpid())
        bench.load(url, images, args.clients, 3, 2)  # warm
        before, (hist0, m0) = snapshot(server), scrape(url)
        started = time.monotonic()
        result = bench.load(url, images, args.clients, args.seconds, 0)
        elapsed = time.monotonic() - started
        after, (hist1, m1) = snapshot(server), scrape(url)
        n = max(1, result["requests"])
        counts, below = [], 0.0
        for le, total in hist1.items():
            here = total - hist0.get(le, 0.0) - below
            below += here
            if here:
                counts.append(f"<={le}: {int(here)}")
        print(
            f"{env or 'defaults'}: {result['images_per_s']:.2f} images/s, p50 "
            f"{result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, errors {result['errors']}"
        )
        print("   batches", ", ".join(counts))
        busy = m1["serve_runner_busy_seconds_total"] - m0["serve_runner_busy_seconds_total"]
        waited = m1["serve_queue_duration_seconds_sum"] - m0["serve_queue_duration_seconds_sum"]
        items = m1["serve_queue_duration_seconds_count"] - m0["serve_queue_duration_seconds_count"]
        print(
            f"   runner instances busy {100 * busy / (elapsed * m1['instances']):.1f} % of the "
            f"time; mean wait in the batcher {1000 * waited / max(1.0, items):.1f} ms per image"
        )
        used = 0.0
        for part in ("server", "workers", "loadgen"):
            for name, seconds in (after[part] - before[part]).most_common():
                used += seconds
                if seconds > 0.05:
                    print(
                        f"   {part:8s} {name:20s} {seconds:7.2f} s  {1000 * seconds / n:6.2f} ms/image"
                    )
        available = (os.cpu_count() or 1) * elapsed
        print(f"   CPU used {used:.1f} s of {available:.1f} s; {1000 * used / n:.1f} ms per image")

    service_env = {"SERVE_BATCH_BUCKETS": "1,2,4,8,16,32", "SERVE_MAX_BATCH_SIZE": "32", **env}
    bench.run_service(service_env, measure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
