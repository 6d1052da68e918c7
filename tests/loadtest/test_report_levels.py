"""Levels of a report from synthetic request logs and Locust histories (no Locust run)."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from loadtest.suite import report, shapes
from tests.support.helpers import ROOT

T0 = 1000.0
STEPS = [(1, 0), (1, 1), (2, 1)]  # users of worker a and b at each 10-s step: 1, 2, 3 in all


def write_worker_logs(out):
    """`--processes 2`, one user more per step: each worker logs its own share of the users
    with its requests (10 req/s per user)."""
    rows: dict[str, list[tuple[float, int]]] = {"a": [], "b": []}
    for step, (ua, ub) in enumerate(STEPS):
        for i in range(100):
            t = T0 + step * 10 + i * 0.1
            rows["a"] += [(t, ua)] * ua
            rows["b"] += [(t + 0.05, ub)] * ub
    for worker, logged in rows.items():
        with (out / f"requests-{worker}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["time", "type", "name", "response_time_ms", "ok", "users"])
            w.writerows([f"{t:.3f}", "POST", "x", "10", 1, u] for t, u in logged)


def test_levels_count_the_users_of_every_process(tmp_path):
    write_worker_logs(tmp_path)
    reqs = report.read_requests(tmp_path)
    assert [lv.users for lv in report.levels_from_requests(reqs, T0, 0.25)] == [1, 2, 3]


def test_levels_follow_the_plan_of_the_run(tmp_path):
    write_worker_logs(tmp_path)
    reqs = report.read_requests(tmp_path)
    stages = shapes.plan("step", shapes.ShapeParams(step_users=1, step_time=10, steps=3))
    levels = report.levels_from_requests(reqs, T0, 0.25, stages=stages)
    assert [lv.users for lv in levels] == [1, 2, 3]
    # Each level: the last three quarters of its step, at 10 req/s per user.
    for lv, users in zip(levels, (1, 2, 3), strict=True):
        assert lv.start == pytest.approx(10 * (users - 1) + 2.5)
        assert lv.rps == pytest.approx(10 * users, rel=0.05)


def test_a_ramp_is_not_a_level(tmp_path):
    """Soak: users grow one by one over the ramp stage; only the hold after it is a level."""
    with (tmp_path / "requests.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", "type", "name", "response_time_ms", "ok", "users"])
        for i in range(300):  # 30 s: a ramp to 4 users over 20 s, then 10 s at 4
            w.writerow([f"{T0 + i * 0.1:.3f}", "POST", "x", "10", 1, min(4, 1 + i // 50)])
    stages = shapes.plan("soak", shapes.ShapeParams(users=4, ramp_time=20, run_time=30))
    levels = report.levels_from_requests(report.read_requests(tmp_path), T0, 0.25, stages=stages)
    assert [(lv.users, lv.start) for lv in levels] == [(4, 22.5)]


def write_history_only(out, images_per_request: int | None = None) -> None:
    """What an in-cluster run leaves (no request log, no /metrics, no run.json): 40 s at 10
    users, 100 req/s, p50 100 ms and mean 300 ms."""
    hdr = ["Timestamp", "User Count", "Type", "Name", "50%", "95%", "99%",
           "Total Request Count", "Total Failure Count", "Total Average Response Time"]  # fmt: skip
    rows, n, avg = [], 0, 0.0
    for t in range(100, 141):
        rows.append([t, 10, "", "Aggregated", 100, 900, 1000, n, 0, avg])
        avg, n = (avg * n + 300 * 100) / (n + 100), n + 100
    with (out / "locust_stats_history.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(hdr)
        w.writerows(rows)
    with (out / "locust_stats.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Type", "Name", "Request Count", "Failure Count", "Requests/s",
                    "Average Response Time", "50%", "95%", "99%", "Max Response Time"])  # fmt: skip
        w.writerow(["", "Aggregated", n, 0, 100, 300, 100, 900, 1000, 2000])


def test_a_history_only_report_sizes_the_hpa_from_the_mean_latency(tmp_path):
    """Little's law needs the window's mean latency: Locust's history has it (as a cumulative
    mean), not only its p50."""
    write_history_only(tmp_path)
    s = report.build(tmp_path, slo_p99_ms=2000)
    (lv,) = s["levels"]
    assert lv["mean_ms"] == pytest.approx(300)
    # 100 req/s x 0.3 s = 30 in flight, x 0.8 headroom
    assert s["capacity"]["hpa_target_average_value"] == 24


def test_the_hpa_target_counts_the_images_of_a_request(tmp_path):
    write_history_only(tmp_path)
    s = report.build(tmp_path, slo_p99_ms=2000, images_per_request=8)
    assert s["capacity"]["hpa_target_average_value"] == 8 * 24
    cli = subprocess.run(
        [sys.executable, "-m", "loadtest", "report", str(tmp_path), "--slo-p99-ms", "2000",
         "--images-per-request", "8"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert "targetAverageValue=192" in cli.stdout


def test_a_report_without_run_json_does_not_claim_its_tags_or_loop(tmp_path):
    # The chart's master leaves Locust's CSVs only: "tags `all`; closed loop" would be a guess.
    write_history_only(tmp_path)
    report.build(tmp_path)
    md = (tmp_path / "summary.md").read_text()
    assert "tags `all`" not in md and "closed loop" not in md
    assert "unknown: no `run.json`" in md
