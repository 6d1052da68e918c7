"""Print the nv_gpu_* series this machine's GPUs give, as a scrape would (docs/OPERATIONS.md).

    python scripts/gpu_metrics_check.py              # one process: read at the scrape
    PROMETHEUS_MULTIPROC_DIR=DIR python scripts/gpu_metrics_check.py --write
    PROMETHEUS_MULTIPROC_DIR=DIR python scripts/gpu_metrics_check.py   # another process reads

Exit status 1 where NVML sees no GPU.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service import gpu_metrics  # noqa: E402
from service.metrics import Metrics  # noqa: E402


def main() -> int:
    logging.basicConfig(level=logging.INFO)
    metrics = Metrics()
    if "--write" in sys.argv:  # the accelerator process's part: write at each refresh
        devices = gpu_metrics.install(metrics)
        metrics.refresh()
        return 0 if devices else 1
    if not metrics.multiprocess and not gpu_metrics.install(metrics):
        return 1
    text = metrics.render()[0].decode()
    sys.stdout.write("".join(line + "\n" for line in text.splitlines() if "nv_gpu" in line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
