"""Scrape the service's /metrics during a run: the server side of a report."""

from __future__ import annotations

import csv
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from ..common import cpu_seconds, process_tree

log = logging.getLogger(__name__)

# Columns read from each scrape; queue depth adds one column per stage label.
COUNTERS = {
    "serve_inference_count": "inference_count",
    "serve_execution_count": "execution_count",
    "serve_runner_busy_seconds": "runner_busy_seconds",
}
GAUGES = {
    "serve_runner_busy_ratio": "runner_busy_ratio",
    "serve_images_in_flight": "images_in_flight",
    "serve_pending_requests": "pending_requests",
}


def parse(text: str) -> dict[str, float]:
    """One scrape as a flat row (counters as their ``_total`` value)."""
    row: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")
            if name in COUNTERS and sample.name.endswith("_total"):
                row[COUNTERS[name]] = sample.value
            elif sample.name == "serve_model_instances":  # the default model stage's
                if sample.labels.get("stage") == "model":
                    row["model_instances"] = sample.value
            elif sample.name in GAUGES:
                row[GAUGES[sample.name]] = sample.value
            elif sample.name == "serve_queue_depth":
                row[f"queue_depth_{sample.labels.get('stage', '')}"] = sample.value
    return row


class Scraper:
    """Polls ``url`` every ``interval`` seconds in a thread; rows keep the wall time."""

    def __init__(
        self,
        url: str,
        interval: float = 1.0,
        timeout: float = 5.0,
        cpu: dict[str, Callable[[], float | None]] | None = None,
    ):
        self.url = url
        self.interval = interval
        self.timeout = timeout
        # CPU seconds so far of named process trees, one ``cpu_seconds_<name>`` column each.
        self.cpu = cpu or {}
        self.rows: list[dict[str, float]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-scraper", daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(self.timeout + self.interval + 1)
        self.scrape()  # the final counters

    def scrape(self) -> None:
        try:
            r = requests.get(self.url, timeout=self.timeout)
            r.raise_for_status()
            row = {"time": time.time(), **parse(r.text)}
            for name, sample in self.cpu.items():
                seconds = sample()
                if seconds is not None:
                    row[f"cpu_seconds_{name}"] = seconds
            self.rows.append(row)
        except (requests.RequestException, ValueError) as exc:
            self.errors += 1
            if self.errors <= 3:
                log.warning("scraping %s failed: %s", self.url, exc)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.scrape()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def write(self, path: Path) -> None:
        write_rows(path, self.rows)


def write_rows(path: Path, rows: list[dict[str, float]]) -> None:
    columns = ["time"] + sorted({k for r in rows for k in r} - {"time"})
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(rows)


def read_rows(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with path.open() as f:
        return [
            {k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)
        ]


def summarize(rows: list[dict[str, float]], start: float | None = None, end: float | None = None):
    """Server-side means over [start, end] (wall time): mean batch size and runner busy
    fraction from counter deltas, gauges averaged; {} with fewer than two scrapes."""
    sel = [
        r
        for r in rows
        if (start is None or r["time"] >= start) and (end is None or r["time"] <= end)
    ]
    if len(sel) < 2:
        return {}
    first, last = sel[0], sel[-1]
    out: dict[str, float] = {}
    dt = last["time"] - first["time"]

    def delta(key: str) -> float | None:
        if key in first and key in last:
            return last[key] - first[key]
        return None

    inf, exe, busy = (
        delta("inference_count"),
        delta("execution_count"),
        delta("runner_busy_seconds"),
    )
    if inf is not None and exe:
        out["mean_batch_size"] = inf / exe
    if inf is not None and dt > 0:
        out["images_per_s"] = inf / dt
    for key in sorted({k for k in last if k.startswith("cpu_seconds_")}):
        spent = delta(key)
        if spent is not None and dt > 0:  # cores kept busy over the window
            out["cpu_" + key.removeprefix("cpu_seconds_")] = spent / dt
    if busy is not None and dt > 0:  # busy seconds add up over the runner instances
        instances = max(1.0, last.get("model_instances", 1.0))
        out["runner_busy"] = min(1.0, busy / dt / instances)
    gauges = {k for r in sel for k in r if k.startswith("queue_depth_")} | {
        "images_in_flight",
        "pending_requests",
    }
    for key in sorted(gauges):
        values = [r[key] for r in sel if key in r]
        if values:
            out[key] = sum(values) / len(values)
            out[f"{key}_max"] = max(values)
    return out


def tree_cpu_sampler(pid: int) -> Callable[[], float | None]:
    """CPU seconds of process ``pid`` and its descendants so far, for ``Scraper(cpu=...)``.
    A descendant that exited takes its seconds with it, so each process's last value is kept
    and the sum never goes down; after the root exits the last sum stays (None before any)."""
    seen: dict[int, float] = {}
    total: float | None = None

    def sample() -> float | None:
        nonlocal total
        procs = process_tree(pid)
        if not procs:
            return total
        for proc in procs:
            seconds = cpu_seconds(proc)
            if seconds is not None:
                seen[proc.pid] = seconds
        total = sum(seen.values())
        return total

    return sample
