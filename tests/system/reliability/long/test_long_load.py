"""10x overload for a minute and a ten-minute soak against a real server on loopback.

Figures go to reports/reliability/{overload,soak}.json and are recorded in docs/RELIABILITY.md.
The server is the tiny model with one preprocessing worker and slow-to-decode images, so that
the capacity (some tens of requests a second) is well within what one client process can offer
tenfold on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

import httpx
import pytest

from tests.support.harness import closed_loop, open_loop, slow_png, tree_rss_bytes
from tests.support.helpers import ROOT, start_server, stop_server

# `make reliability` runs these (minutes); `make test` deselects them (pyproject.toml).
pytestmark = pytest.mark.long

REPORTS = ROOT / "reports" / "reliability"
TIMEOUT_S = 5.0
# The admission bound times the time per image must stay under the timeout, *as contended
# under overload*: on a 2-core machine shared with the load generator an image takes up to
# ~1 s, so 2 images in flight (one decoding, one waiting) keep every admitted request in time.
# With 4, a few admitted requests ran into their 5 s deadline (docs/RELIABILITY.md).
ENV = {
    "SERVE_PREPROCESS_WORKERS": "1",
    "SERVE_MAX_QUEUE_IMAGES": "2",
    "SERVE_REQUEST_TIMEOUT_S": str(TIMEOUT_S),
    "SERVE_LOG_LEVEL": "warning",
}


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.start_t = time.monotonic()

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.samples.append((time.monotonic() - self.start_t, tree_rss_bytes(self.pid)))

    def between(self, t0: float, t1: float) -> list[int]:
        return [rss for t, rss in self.samples if t0 <= t < t1]


def _summary(result) -> dict:
    ok, refused = result.of(200), result.of(503)
    return {
        "offered": result.offered,
        "wall_s": round(result.wall_s, 2),
        "accepted_200": len(ok),
        "refused_503_retry_after": len([o for o in refused if o.retry_after]),
        "lost": len(result.lost()),
        "lost_examples": [o.__dict__ for o in result.lost()[:5]],
        "accepted_p50_s": round(result.percentile([o.seconds for o in ok], 50), 4),
        "accepted_p99_s": round(result.percentile([o.seconds for o in ok], 99), 4),
        "accepted_max_s": round(max((o.seconds for o in ok), default=0.0), 4),
        "refused_p50_s": round(result.percentile([o.seconds for o in refused], 50), 4),
        "refused_p90_s": round(result.percentile([o.seconds for o in refused], 90), 4),
        "refused_p99_s": round(result.percentile([o.seconds for o in refused], 99), 4),
    }


@pytest.fixture(scope="module")
def load_server(tiny_model_file, tmp_path_factory):
    srv = start_server(
        {"SERVE_WEIGHTS": str(tiny_model_file), **ENV},
        tmp_path_factory.mktemp("load") / "server.log",
    )
    yield srv
    stop_server(srv)


def _capacity(url: str, body: bytes) -> tuple[float, float]:
    """(requests per second at saturation, p50 seconds of a lone request)."""
    lone = asyncio.run(closed_loop(url, body, 1, 5.0))
    busy = asyncio.run(closed_loop(url, body, 4, 10.0))
    lone_p50 = lone.percentile([o.seconds for o in lone.of(200)], 50)
    capacity = len(busy.of(200)) / busy.wall_s
    assert capacity > 0 and lone.of(200), (lone.outcomes[:3], busy.outcomes[:3])
    return capacity, lone_p50


def test_tenfold_overload_for_a_minute(load_server):
    factor = float(os.environ.get("OVERLOAD_FACTOR", "10"))
    duration = float(os.environ.get("OVERLOAD_S", "60"))
    url = load_server.url + "/v1/classify"
    body = slow_png(2000)
    capacity, lone_p50 = _capacity(url, body)
    rss = RssSampler(load_server.process.pid)
    rss.start()
    t0 = time.monotonic() - rss.start_t
    result = asyncio.run(open_loop(url, body, capacity * factor, duration))
    t1 = time.monotonic() - rss.start_t
    # Back to normal: lone requests as fast as before the overload, within seconds.
    ended = time.monotonic()
    recovered_s = None
    while time.monotonic() - ended < 30:
        r = httpx.post(url, content=body, headers={"content-type": "image/png"}, timeout=30)
        took = r.elapsed.total_seconds()
        if r.status_code == 200 and took < 2 * lone_p50 + 0.05:
            recovered_s = time.monotonic() - ended
            break
        time.sleep(0.1)
    rss.stop.set()
    rss.join()
    during = rss.between(t0, t1)
    first, last = during[: max(1, len(during) // 6)], during[-max(1, len(during) // 6) :]
    report = {
        "capacity_rps": round(capacity, 2),
        "lone_p50_s": round(lone_p50, 4),
        "offered_rps": round(capacity * factor, 2),
        "factor": factor,
        "duration_s": duration,
        "request_timeout_s": TIMEOUT_S,
        **_summary(result),
        "rss_mb_first_sixth": round(sum(first) / len(first) / 2**20, 1),
        "rss_mb_last_sixth": round(sum(last) / len(last) / 2**20, 1),
        "rss_mb_max": round(max(during) / 2**20, 1),
        "recovered_after_s": None if recovered_s is None else round(recovered_s, 2),
    }
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "overload.json").write_text(json.dumps(report, indent=2))
    print("\nOVERLOAD", json.dumps(report, indent=2))
    assert report["lost"] == 0
    assert report["accepted_p99_s"] <= TIMEOUT_S
    # At once: the client shares two cores with the server, so its own scheduling shows in
    # the tail; the bulk of refusals must still be immediate.
    assert report["refused_p50_s"] < 0.1 and report["refused_p90_s"] < 0.5
    assert report["refused_503_retry_after"] > report["accepted_200"]  # it was an overload
    assert report["rss_mb_last_sixth"] <= 1.05 * report["rss_mb_first_sixth"]
    assert recovered_s is not None and recovered_s < 10


def test_ten_minute_soak_memory_stays_flat(load_server):
    duration = float(os.environ.get("SOAK_S", "600"))
    limit_pct = float(os.environ.get("SOAK_RSS_PCT", "5"))
    url = load_server.url + "/v1/classify"
    body = slow_png(2000)
    capacity, _ = _capacity(url, body)
    rate = 0.6 * capacity
    rss = RssSampler(load_server.process.pid, every_s=2.0)
    rss.start()
    result = asyncio.run(open_loop(url, body, rate, duration))
    rss.stop.set()
    rss.join()
    # Baseline: the second minute (the first warms caches and allocators); end: the last minute.
    window = min(60.0, duration / 5)
    base = rss.between(window, 2 * window)
    end = rss.between(duration - window, duration + 1)
    growth = 100 * (sum(end) / len(end) - sum(base) / len(base)) / (sum(base) / len(base))
    report = {
        "duration_s": duration,
        "offered_rps": round(rate, 2),
        "capacity_rps": round(capacity, 2),
        **_summary(result),
        "rss_mb_baseline": round(sum(base) / len(base) / 2**20, 1),
        "rss_mb_end": round(sum(end) / len(end) / 2**20, 1),
        "rss_growth_pct": round(growth, 2),
        "rss_limit_pct": limit_pct,
    }
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "soak.json").write_text(json.dumps(report, indent=2))
    print("\nSOAK", json.dumps(report, indent=2))
    assert report["lost"] == 0
    assert growth < limit_pct
