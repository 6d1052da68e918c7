"""Probe, run by hand: compiled ResNet50 throughput with N runner instances in parallel threads.

    python loadtest/instances_probe.py INTRA_OP INTER_OP INSTANCES BATCH [SECONDS]

e.g. `0 0 1 16` (one instance, TensorFlow's default threads) vs `1 2 2 8` (two single-threaded
instances). Prints the images/s of all instances together. Not used by the service.
"""

from __future__ import annotations

import os
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def main(argv: list[str]) -> int:
    intra, inter, instances, size = (int(a) for a in argv[:4])
    seconds = float(argv[4]) if len(argv) > 4 else 10.0
    from service.model.loader import configure_tensorflow, load_model
    from service.pipeline.runner import ModelRunner

    configure_tensorflow(intra_op_threads=intra, inter_op_threads=inter)
    loaded = load_model("resnet50", "random")
    runners = [ModelRunner(loaded, [size]) for _ in range(instances)]
    for runner in runners:
        runner.warmup()
    batch = np.random.default_rng(0).integers(0, 255, (size, 224, 224, 3), dtype=np.uint8)
    counts = [0] * instances
    start = time.perf_counter()
    stop = start + seconds

    def work(i: int) -> None:
        while time.perf_counter() < stop:
            runners[i].run(batch)
            counts[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(instances)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = sum(counts) * size / (time.perf_counter() - start)
    print(f"intra={intra} inter={inter} instances={instances} batch={size}: {rate:.2f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
