"""The pieces of `make e2e` (scripts/e2e/) that run without a cluster: the DNS stand-in's
answers, read back with a real resolver's wire format, the wheelhouse's marker check, and the
cleanup of a state directory that an earlier run left behind."""

from __future__ import annotations

import importlib.util
import os
import socket
import struct
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "e2e" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


dns = load("dns")
checks = load("checks")


def query(name: str, qtype: int = 1, ident: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return (
        struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0)
        + labels
        + b"\0"
        + struct.pack(">HH", qtype, 1)
    )


def parse(reply: bytes) -> tuple[int, int, list[str]]:
    """(id, rcode, A records)."""
    ident, flags, _, ancount, _, _ = struct.unpack(">HHHHHH", reply[:12])
    offset = 12
    while reply[offset]:
        offset += reply[offset] + 1
    offset += 5
    records = []
    for _ in range(ancount):
        _, rtype, _, _, length = struct.unpack(">HHHIH", reply[offset : offset + 12])
        offset += 12
        if rtype == 1:
            records.append(socket.inet_ntoa(reply[offset : offset + length]))
        offset += length
    return ident, flags & 0xF, records


@pytest.fixture
def services():
    s = dns.Services.__new__(dns.Services)
    s.lock = threading.Lock()
    s.ips = {("resnet-e2e", "e2e-resnet-serve"): "10.213.0.17"}
    return s


def test_a_service_name_resolves_to_its_cluster_ip(services):
    reply = dns.answer(
        query("e2e-resnet-serve.resnet-e2e.svc.cluster.local"), services, "cluster.local"
    )
    assert parse(reply) == (0x1234, 0, ["10.213.0.17"])


def test_a_known_name_has_no_ipv6_address(services):
    reply = dns.answer(
        query("e2e-resnet-serve.resnet-e2e.svc.cluster.local", 28), services, "cluster.local"
    )
    assert parse(reply) == (0x1234, 0, [])


@pytest.mark.parametrize(
    "name",
    [
        "other.resnet-e2e.svc.cluster.local",  # unknown Service
        "e2e-resnet-serve.resnet-e2e.svc.resnet-e2e.svc.cluster.local",  # a search-path try
        "pypi.org",  # never forwarded: nothing leaves the machine
    ],
)
def test_every_other_name_is_nxdomain(services, name):
    assert parse(dns.answer(query(name), services, "cluster.local"))[1] == 3


def test_garbage_gets_no_answer(services):
    assert dns.answer(b"\x00\x01", services, "cluster.local") == b""


def wheel(folder: Path, name: str, requires: list[str]) -> None:
    with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as z:
        meta = "Metadata-Version: 2.1\nName: " + name + "\nVersion: 1.0\n"
        meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
        z.writestr(f"{name}-1.0.dist-info/METADATA", meta)


def test_wheel_gaps_follow_the_images_python_not_this_one(tmp_path):
    wheel(tmp_path, "redis", ['async-timeout>=4.0.3; python_full_version < "3.11.3"', "pyjwt>=2"])
    wheel(tmp_path, "pyjwt", ['cryptography; extra == "crypto"'])
    assert checks.wheel_gaps(tmp_path, "3.11.2") == ["async-timeout>=4.0.3"]
    assert checks.wheel_gaps(tmp_path, "3.11.7") == []


def started_at(pid: int) -> str:
    return (Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split())[19]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
def test_cleanup_of_a_stale_state_signals_only_what_is_still_ours(tmp_path):
    """A run killed with its machine (or a disk restored on another machine) leaves $STATE/pids
    naming processes that are gone, and numbers that other processes may now hold. The next
    run's cleanup, under the strict shell options run.sh uses, must finish, stop what it
    started itself and what outlived it, and leave every other process alone."""
    state, cache, logs = tmp_path / "state", tmp_path / "cache", tmp_path / "logs"
    for d in (state, cache, logs):
        d.mkdir()
    stranger = subprocess.Popen(["sleep", "300"])
    gone = subprocess.Popen(["true"])
    gone_start = started_at(gone.pid)
    gone.wait()
    # What a killed dockerd leaves: a containerd shim, known by the path under $STATE in its
    # arguments, and the container it keeps, a child known by nothing but its parent.
    # (A process that outlives its child, as a shim does, so that only the cleanup ends it.)
    keeper = (
        "import subprocess, time;"
        "print(subprocess.Popen(['sleep', '300']).pid, flush=True);"
        "time.sleep(300)"
    )
    stray = subprocess.Popen(
        [sys.executable, "-c", keeper, f"{state}/docker-exec"], stdout=subprocess.PIPE
    )
    stray_child = int(stray.stdout.readline())
    try:
        (state / "pids").write_text(
            f"{gone.pid} etcd {gone_start}\n"
            f"{stranger.pid} kubelet {int(started_at(stranger.pid)) + 1}\n"  # the number reused
            f"{stranger.pid} dockerd\n"  # a line without a start time is never signalled
        )
        script = """
            set -euo pipefail
            source scripts/e2e/cluster.sh
            start ours sleep 300
            read -r pid name start < <(tail -n 1 "$PIDS")
            ours "$pid" "$start"
            cluster_down
            ! kill -0 "$pid" 2>/dev/null
            [ ! -e "$PIDS" ]
            cluster_down
            echo cleaned
        """
        env = {**os.environ, "STATE": str(state), "CACHE": str(cache), "LOGS": str(logs)}
        done = subprocess.run(
            ["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "cleaned"
        assert stranger.poll() is None, "cleanup signalled a process it did not start"
        assert stray.wait(timeout=10) == -9
        assert not running(stray_child), "a stray's child outlived it"
    finally:
        for process in (stranger, stray):
            process.kill()
            process.wait()


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_the_relabeling_check_pairs_dropped_duplicates_and_leaves_a_replaced_pods_alone(
    monkeypatch,
):
    """vmagent lists a dropped target (the gRPC port of a pod, a duplicate of its HTTP port
    once relabeled) for minutes after the pod is deleted, when its kept twin has already left
    the active targets. The check after a rollout must not take that for a disagreement of the
    relabeling model, and must still catch one in a pod that is there."""
    from tests.chart.chart_helpers import render
    from tests.chart.scrape_model import finish, pod_role, relabel

    prometheus = load("prometheus")
    objs = render(("values-cpu.yaml",), ("metrics.serviceMonitor.enabled=true",))
    (job,) = [j for j in prometheus.scrape_configs(objs) if j["job_name"] == "kubernetes-pods"]
    metas = [m | {"job": job["job_name"]} for m in pod_role(objs, "serving")]
    server = sorted({m["__meta_kubernetes_pod_name"] for m in metas if "server" in str(m)})
    live, gone = server[0], server[1]

    def of(pod: str) -> list[dict]:
        return [m for m in metas if m["__meta_kubernetes_pod_name"] == pod]

    assert len(of(live)) == 2, "an HTTP and a gRPC port: one scraped, one a duplicate"
    kept = finish(job, relabel(of(live)[0], job["relabel_configs"]))
    targets = {
        "activeTargets": [{"discoveredLabels": of(live)[0], "labels": dict(kept.labels)}],
        "droppedTargets": [{"discoveredLabels": of(live)[1]}, {"discoveredLabels": of(gone)[1]}],
    }
    monkeypatch.setattr(prometheus, "api", lambda *a, **k: targets)

    line = prometheus.model_agrees("agent", objs, gone)
    assert "the 1 more it drops are another port of a kept pod" in line
    assert f"1 dropped ones of the replaced pod {gone} not checked" in line
    with pytest.raises(SystemExit, match="the relabeling model keeps"):
        prometheus.model_agrees("agent", objs)
    # A live pod's twin-less dropped target is still a disagreement after a rollout.
    targets["activeTargets"] = []
    with pytest.raises(SystemExit, match="the relabeling model keeps"):
        prometheus.model_agrees("agent", objs, gone)


def test_the_wheelhouse_holds_the_extras_the_cpu_image_installs():
    """`make e2e` fills its wheelhouse with the extras it reads from mk/images.mk (as
    scripts/e2e/images.sh's sed reads them): each must be an extra of the package, so that the
    image's `pip install .[extras]` finds every wheel offline."""
    import tomllib

    read = subprocess.run(
        ["sed", "-n", "s/^CPU_EXTRAS ?= *//p", str(ROOT / "mk" / "images.mk")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    extras = read.split(",")
    offered = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "tensorflow" in extras and "otel" in extras, read
    assert set(extras) <= set(offered["optional-dependencies"]), extras
    assert (
        "CPU_EXTRAS=$(sed -n 's/^CPU_EXTRAS ?= *//p' mk/images.mk)"
        in (ROOT / "scripts" / "e2e" / "images.sh").read_text()
    )
