"""The compiled model's ceiling for `make bench` (loadtest/bench/resnet.py): the service's own
runners in this process, measured per bucket, in a fresh process for a search, or in one kept
up idle between the service's rounds so that each round pairs figures of the same minute.

TensorFlow's thread pools are fixed at the first model and Keras reads its backend at its first
import, so every configuration runs in a process of its own (``python -m loadtest.bench.resnet
--ceiling-only`` or ``--ceiling-serve``).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

from loadtest.common import ROOT


def _ceiling_runners(buckets: list[int], instances: int, intra: int, inter: int):
    """The service's runners in this process: the backend's configuration, one per-shape
    warm-up.

    Call it once per process: TensorFlow's thread pools are fixed at the first model, and Keras
    reads its backend (``KERAS_BACKEND``, set by ``--backend``) at its first import.
    ``instances``/``intra``/``inter`` are the service's settings (``SERVE_MODEL_INSTANCES``...;
    0: automatic, resolved as the service resolves them).
    """
    from service.model.backends import configure, make_runner
    from service.model.loader import load_model
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
