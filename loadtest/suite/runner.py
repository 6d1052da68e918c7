"""One headless Locust run against a URL, with /metrics scraped, then the report.

Load goes only where ``--host`` points; ``--start-local`` starts the service on a free
loopback port for the run and stops it afterwards.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..common import free_port, serving, wait_ready
from . import report, shapes
from .scrape import Scraper, tree_cpu_sampler

log = logging.getLogger(__name__)
LOCUSTFILE = Path(__file__).with_name("locustfile.py")


@dataclass
class RunConfig:
    """What to run. Durations in seconds; ``tags`` empty: every user class."""

    host: str
    out: Path
    shape: str = "constant"
    params: shapes.ShapeParams = field(default_factory=shapes.ShapeParams)
    tags: list[str] = field(default_factory=lambda: ["classify-raw"])
    exclude_tags: list[str] = field(default_factory=list)
    arrival_rate: float = 0.0
    think_time: float = 0.0
    images_dir: str = ""
    images_per_request: int = 1
    top_k: int = 5
    seed: int = 0
    scrape_interval: float = 1.0
    processes: int = 0  # Locust worker processes on this machine (0: one process)
    # A local service's PID: its CPU is sampled next to the load generator's (0: not local).
    service_pid: int = 0
    extra: list[str] = field(default_factory=list)

    def stages(self) -> list[shapes.Stage]:
        return shapes.plan(self.shape, self.params)


def locust_command(cfg: RunConfig) -> list[str]:
    p = cfg.params
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", cfg.host, "--only-summary",
        "--csv", str(cfg.out / report.PREFIX), "--csv-full-history",
        "--html", str(cfg.out / "locust.html"),
        "--shape", cfg.shape,
        "-u", str(p.users), "-r", str(p.spawn_rate),
        # Worker processes get no -t (Locust drops it there): the plan's inputs again.
        "--shape-run-time", str(p.run_time), "--shape-users", str(p.users),
        "--shape-spawn-rate", str(p.spawn_rate),
        "--step-users", str(p.step_users), "--step-time", str(p.step_time), "--steps", str(p.steps),
        "--spike-users", str(p.spike_users), "--spike-at", str(p.spike_at),
        "--spike-duration", str(p.spike_duration), "--ramp-time", str(p.ramp_time),
        "--arrival-rate", str(cfg.arrival_rate), "--think-time", str(cfg.think_time),
        "--images-per-request", str(cfg.images_per_request), "--top-k", str(cfg.top_k),
        "--seed", str(cfg.seed), "--stop-timeout", "10",
        "--request-log", str(cfg.out / "requests.csv"),
    ]  # fmt: skip
    if cfg.shape == "constant":
        # Whole seconds only: rounded up, it never cuts the plan's last fraction of a second.
        cmd += ["-t", f"{math.ceil(p.run_time)}s"]
    if cfg.images_dir:
        cmd += ["--images-dir", cfg.images_dir]
    if cfg.tags:
        cmd += ["--tags", *cfg.tags]
    if cfg.exclude_tags:
        cmd += ["--exclude-tags", *cfg.exclude_tags]
    if cfg.processes:
        cmd += ["--processes", str(cfg.processes)]
    return cmd + cfg.extra


def run(cfg: RunConfig, ready_timeout: float = 120.0, **report_args) -> dict:
    """Run Locust headless into ``cfg.out`` and build the report; returns the summary."""
    stages = cfg.stages()  # refuses impossible shapes before anything starts
    cfg.out.mkdir(parents=True, exist_ok=True)
    for old in cfg.out.glob("requests*.csv"):
        old.unlink()
    wait_ready(cfg.host, timeout=ready_timeout)
    meta = {
        "name": cfg.out.name,
        "host": cfg.host,
        "shape": cfg.shape,
        "params": asdict(cfg.params),
        "stages": [asdict(s) for s in stages],
        "planned_seconds": shapes.total_time(stages),
        "tags": cfg.tags,
        "exclude_tags": cfg.exclude_tags,
        "arrival_rate": cfg.arrival_rate,
        "images_dir": cfg.images_dir or "(built-in small set)",
        "images_per_request": cfg.images_per_request,
        "command": locust_command(cfg),
    }
    limit = shapes.total_time(stages) + 60
    with (cfg.out / "locust.log").open("wb") as logf:
        meta["locust_started"] = time.time()
        proc = subprocess.Popen(meta["command"], stdout=logf, stderr=subprocess.STDOUT)
        # The load generator's CPU next to the service's: on one machine they share the cores.
        cpu = {"loadgen": tree_cpu_sampler(proc.pid)}
        if cfg.service_pid:
            cpu["service"] = tree_cpu_sampler(cfg.service_pid)
        try:
            with Scraper(
                cfg.host.rstrip("/") + "/metrics", cfg.scrape_interval, cpu=cpu
            ) as scraper:
                proc.wait(limit)
        except BaseException:  # over its time limit, or this run interrupted: no stray Locust
            proc.kill()
            proc.wait()
            raise
        meta["locust_ended"] = time.time()
    scraper.write(cfg.out / "server_metrics.csv")
    # Locust exits 1 when any request failed; the report says which. Other codes: broken run.
    meta["locust_exit_code"] = proc.returncode
    (cfg.out / "run.json").write_text(json.dumps(meta, indent=2) + "\n")
    stats = cfg.out / f"{report.PREFIX}_stats.csv"
    # No Aggregated row: Locust stopped before any user ran (e.g. --tags that match none).
    if proc.returncode not in (0, 1) or not stats.exists() or "Aggregated" not in stats.read_text():
        tail = (cfg.out / "locust.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"locust exited {proc.returncode}:\n{tail}")
    return report.build(cfg.out, **report_args)


@contextmanager
def local_service(env: dict[str, str], log_path: Path, timeout: float = 600.0):
    """``python -m service`` on a free loopback port for the duration of the block: yields
    its URL and PID."""
    port = free_port()
    full_env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **env,
        "SERVE_HOST": "127.0.0.1",
        "SERVE_PORT": str(port),
    }
    log.info("starting the local service (its log: %s)", log_path)
    command = [sys.executable, "-m", "service"]
    # The caller's directory, so that relative paths in ``env`` mean what they say.
    with serving(command, port, log_path, full_env, timeout=timeout, cwd=None) as (url, proc):
        log.info("local service ready at %s", url)
        yield url, proc.pid
