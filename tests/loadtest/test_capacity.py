"""Capacity arithmetic on synthetic step data."""

from __future__ import annotations

import pytest

from loadtest.suite.capacity import Level, hpa_target, replicas_for, search


def level(users, rps, p99, failures=0, requests=1000, mean=50.0, start=None, **server):
    return Level(
        users=users,
        start=float(users if start is None else start),
        end=float(users) + 1,
        requests=requests,
        failures=failures,
        rps=rps,
        p50_ms=p99 / 3,
        p95_ms=p99 / 1.5,
        p99_ms=p99,
        mean_ms=mean,
        server=server,
    )


STEPS = [
    level(2, 40.0, 80),
    level(4, 75.0, 120),
    level(6, 100.0, 190),
    level(8, 104.0, 420),  # saturated: p99 breaks a 300 ms objective
    level(10, 120.0, 200),  # after the break: not trusted even though it passes
]


def test_capacity_is_the_best_level_before_the_first_break():
    c = search(STEPS, slo_p99_ms=300, target_rps=450, headroom=0.8)
    assert c.per_replica_rps == 100.0
    assert c.sustained_users == 6
    assert c.limit_reached
    assert "8 users" in c.reason and "p99 420 ms > 300 ms" in c.reason
    # 450 / (100 * 0.8) = 5.6 -> 6 replicas
    assert c.replicas == 6


def test_errors_over_the_threshold_break_a_level_and_lower_the_rate():
    steps = [level(2, 40.0, 80), level(4, 80.0, 100, failures=50)]  # 5 % errors
    c = search(steps, slo_p99_ms=300, max_error_rate=0.01)
    assert c.per_replica_rps == 40.0
    assert "errors 5.0% > 1.0%" in c.reason
    # Successful requests only: a level with 0.5 % errors counts 99.5 % of its rate.
    c = search([level(2, 100.0, 80, failures=5)], slo_p99_ms=300)
    assert c.per_replica_rps == pytest.approx(99.5)


def test_levels_are_taken_in_time_order_not_list_order():
    c = search(list(reversed(STEPS)), slo_p99_ms=300)
    assert c.per_replica_rps == 100.0


def test_no_passing_level_gives_no_capacity():
    c = search([level(2, 40.0, 900)], slo_p99_ms=300, target_rps=100)
    assert c.per_replica_rps is None and c.replicas is None
    assert "first level (2 users) already breaks" in c.reason


def test_unreached_limit_is_said():
    c = search(STEPS[:3], slo_p99_ms=300)
    assert c.per_replica_rps == 100.0 and not c.limit_reached
    assert "not reached" in c.reason


@pytest.mark.parametrize(
    ("target", "per_replica", "headroom", "expected"),
    [
        (100, 50, 1.0, 2),
        (100, 50, 0.8, 3),
        (80, 100, 0.8, 1),
        (1, 1000, 0.5, 1),
        (400, 100, 0.8, 5),
    ],
)
def test_replicas_for(target, per_replica, headroom, expected):
    assert replicas_for(target, per_replica, headroom) == expected


def test_replicas_refuse_a_zero_rate_and_bad_headroom():
    with pytest.raises(ValueError):
        replicas_for(10, 0)
    with pytest.raises(ValueError):
        search(STEPS, slo_p99_ms=300, headroom=1.5)


def test_hpa_target_is_headroom_times_the_in_flight_count_at_capacity():
    steps = [level(2, 40.0, 80, images_in_flight=2.0), level(4, 80.0, 120, images_in_flight=6.0)]
    c = search(steps, slo_p99_ms=300, headroom=0.75)
    assert c.sustained_users == 4
    assert c.hpa_target_average_value == 4  # round(0.75 * 6.0)
    assert "measured 6.00" in c.hpa_basis


def test_hpa_target_from_littles_law_without_server_metrics():
    value, basis = hpa_target(level(4, 100.0, 120, mean=200.0), headroom=0.8, images_per_request=2)
    assert value == 32  # 0.8 * (100 req/s * 2 images * 0.2 s)
    assert "Little" in basis


@pytest.mark.parametrize(("levels", "reached"), [(STEPS[:3], False), (STEPS, True)])
def test_summary_md_says_whether_the_limit_was_reached(levels, reached):
    from loadtest.suite.report import markdown

    totals = {"requests": 1, "failures": 0, "error_rate": 0.0, "rps": 1.0}
    totals |= {"p50_ms": 1.0, "p95_ms": 1.0, "p99_ms": 1.0}
    capacity = search(levels, slo_p99_ms=300).as_dict()
    summary = {"run": {}, "totals": totals, "endpoints": {}, "levels": [], "capacity": capacity}
    (line,) = [x for x in markdown(summary).splitlines() if x.startswith("One replica")]
    if reached:
        assert "; the limit: at " in line
    else:  # not "the limit: ... the limit was not reached"
        assert "the limit:" not in line
        assert line.endswith(
            "; every level met the objective: the limit was not reached, "
            "so the capacity is at least this; run more or larger steps."
        )
