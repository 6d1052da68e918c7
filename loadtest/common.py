"""Helpers the Locust suite's runner and the benchmarks share: a free port, waiting for a
server, one percentile definition, one reader of ``/metrics``."""

from __future__ import annotations

import contextlib
import math
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(
    url: str,
    path: str = "/readyz",
    timeout: float = 120.0,
    proc: subprocess.Popen | None = None,
) -> None:
    """Until ``url + path`` answers 200; raises if ``proc`` exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url.rstrip("/") + path, timeout=5) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout:g} s ({last})")


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (as Locust reports them), ``q`` in [0, 100]; NaN for none."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus text scrape: (name, labels, value)."""
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def metric_values(text: str) -> dict[str, float]:
    """A scrape as ``{'name{label="value",...}': value}`` (``name`` alone without labels)."""
    out: dict[str, float] = {}
    for name, labels, value in samples(text):
        if labels:
            inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            name = f"{name}{{{inner}}}"
        out[name] = value
    return out


def delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    """How much the series ``name`` grew between two readings."""
    return after.get(name, 0.0) - before.get(name, 0.0)


def scrape(url: str, timeout: float = 10.0) -> dict[str, float]:
    """``metric_values`` of ``url + /metrics``."""
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout) as r:
        return metric_values(r.read().decode())


@contextlib.contextmanager
def serving(
    cmd: list[str],
    port: int,
    log_path: Path,
    env: dict[str, str] | None = None,
    ready_path: str = "/readyz",
    timeout: float = 300.0,
    cwd: Path | None = ROOT,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run a server on ``port`` until it answers ``ready_path``; yield its URL and process;
    stop it (SIGTERM, then SIGKILL) afterwards. ``cwd`` None: this process's directory."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, ready_path, timeout, proc)
            yield url, proc
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def process_tree(pid: int) -> list:
    """``psutil.Process`` of ``pid`` and all its descendants; [] once it is gone."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(proc) -> float | None:  # type: ignore[no-untyped-def]
    """User + system CPU seconds of a ``psutil.Process`` so far; None once it is gone."""
    import psutil

    try:
        t = proc.cpu_times()
    except psutil.NoSuchProcess:
        return None
    return t.user + t.system
