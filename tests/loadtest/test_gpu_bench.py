"""The GPU benchmark, prepared for a machine with a GPU and no network: its CPU mode runs every
step here, and the wheels `make gpu-wheels` fetches are all the service lacks there."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.helpers import ROOT

# What a lent GPU machine has (the device tool's KINDS.md, "Python packages already there"),
# among the packages the service's dependencies reach.
GPU_MACHINE = {
    "numpy", "pillow", "pyyaml", "prometheus-client", "h11", "uvloop", "grpcio", "protobuf",
    "psutil", "jax", "jaxlib", "ml-dtypes", "absl-py", "h5py", "rich", "pygments",
    "markdown-it-py", "mdurl", "packaging", "anyio", "idna", "click", "typing-extensions",
    "annotated-doc", "opt-einsum", "scipy",
}  # fmt: skip


def test_the_gpu_bench_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "gpu-bench"
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_bench.sh"), str(out), "--cpu-smoke"],
        cwd=ROOT,
        # This machine has what the wheels bring (make test's venv): none to install.
        env={**os.environ, "PYTHON": sys.executable, "WHEELS": str(tmp_path / "none")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert report["mode"] == "cpu-smoke" and report["machine"]["cpus"] >= 1
    for precision in ("float32", "bfloat16"):
        ceiling = report["model_ceiling"][precision]
        assert set(ceiling["buckets"]) == {"1", "2"}, ceiling
        assert ceiling["best_images_per_s"] > 0 and ceiling["device"] == "cpu:0"
    assert report["decode_ceiling_images_per_s"] > 0
    served = report["service"]
    assert served["backend"] == "jax" and served["images_per_s"] > 0 and served["non_200"] == 0
    assert served["p99_ms"] >= served["p50_ms"] > 0 and served["mean_batch"] >= 1
    assert 0 < report["ratios"]["end_to_end_over_min_ceilings"] <= 2
    assert (out / "bench.log").stat().st_size > 0 and (out / "service.log").exists()


def _requires(name: str) -> list[Requirement]:
    found = []
    for text in metadata.requires(name) or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            found.append(req)
    return found


def test_the_wheels_cover_everything_the_gpu_machine_lacks():
    make = (ROOT / "mk" / "gpu.mk").read_text()
    listed = re.search(r"GPU_WHEELS := (.*?)\n\S", make, re.S).group(1)
    wheels = {canonicalize_name(n) for n in listed.replace("\\", " ").split()}
    lacking: set[str] = set()
    seen: set[str] = set()
    todo = [canonicalize_name(r.name) for r in _requires("resnet-serve")]
    todo.append("httptools")  # uvicorn[standard]'s parser, which the front ends run
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in GPU_MACHINE:
            continue
        lacking.add(name)
        todo += [canonicalize_name(r.name) for r in _requires(name)]
    assert lacking <= wheels, sorted(lacking - wheels)
    assert not wheels & GPU_MACHINE, "a wheel the machine already has (two versions break pip)"
