"""scripts/gpu_smoke.py (make gpu-smoke): refuses to pass without a GPU, and measures both
precisions when allowed to run on the CPU (a dry run of the same code path)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_smoke.py"
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": "-1"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=280,
        env=os.environ | CPU_ONLY,
    )


def test_no_gpu_fails_with_a_reason():
    out = run("--iters", "1")
    assert out.returncode == 2, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["gpus"] == [] and "sees no GPU" in report["error"]
    assert report["build"]["cuda_version"]


@pytest.mark.timeout(300)
def test_dry_run_on_cpu_measures_fp32_and_mixed_precision():
    out = run("--allow-cpu", "--batch", "1", "--iters", "1", "--warmup", "1", "--no-xla")
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert [r["precision"] for r in report["results"]] == ["float32", "mixed_float16"]
    assert all(r["images_per_s"] > 0 for r in report["results"])
    assert report["mixed_over_fp32"] > 0
