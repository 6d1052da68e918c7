"""The GPU benchmark, prepared for a machine with a GPU and no network: its CPU mode runs every
step here, and the wheels `make gpu-wheels` fetches are all the service lacks there."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from importlib import metadata

import pytest
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
    assert served["errors"] == 0 and "ratios_withheld" not in report
    assert served["p99_ms"] >= served["p50_ms"] > 0 and served["mean_batch"] >= 1
    assert 0 < report["ratios"]["end_to_end_over_min_ceilings"] <= 2
    # Where the host's CPU went over the load, and how the clients spread over the front ends.
    cpu = served["cpu_ms_per_image"]
    assert cpu["front_ends"] > 0 and cpu["accelerator"] >= cpu["accelerator_loop"] > 0, cpu
    assert 0 < served["host_busy_ratio"] <= 1
    spread = served["connections_per_frontend"]
    assert len(spread) == served["frontend_processes"] and sum(spread) == served["clients"]
    assert report["decode_ms_per_image"] > 0
    assert report["front_ends_beyond_decode_ms_per_image"] == pytest.approx(
        cpu["front_ends"] - report["decode_ms_per_image"]
    )
    assert (out / "bench.log").stat().st_size > 0 and (out / "service.log").exists()


@pytest.fixture
def drops_every_4th_request():
    """A server that closes each connection after 3 answers, as a restarting server or a load
    balancer closing idle connections would; yields its URL."""

    async def handle(reader, writer) -> None:
        for _ in range(3):
            head = await reader.readuntil(b"\r\n\r\n")
            length = [h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")]
            await reader.readexactly(int(length[0].split(b":")[1]))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_the_load_generator_reopens_failed_connections_and_counts_them(drops_every_4th_request):
    from loadtest.bench.loadgen import closed_loop

    r = closed_loop(
        drops_every_4th_request, b"x" * 100, processes=1, connections=4, seconds=1, warmup_s=0
    )
    # Every connection kept sending: three answers, then one error, again and again.
    assert r["requests_per_s"] > 100 and r["non_200"] == 0
    assert r["errors"] == pytest.approx(r["requests_per_s"] / 3, rel=0.2, abs=4)


def test_the_bench_withholds_its_ratios_when_requests_got_no_answer():
    from loadtest.bench.gpu import ratios_withheld

    assert ratios_withheld({"images_per_s": 900.0, "errors": 0, "non_200": 0}) == ""
    assert "12 requests got no answer" in ratios_withheld({"images_per_s": 900.0, "errors": 12})


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
