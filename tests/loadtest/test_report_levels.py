"""Levels of a report from synthetic request logs and Locust histories (no Locust run)."""

from __future__ import annotations

import csv

import pytest

from loadtest.suite import report, shapes

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
