"""The report's runner busy fraction: busy seconds over the wall time, per runner instance."""

from __future__ import annotations

import pytest

from loadtest.suite.scrape import parse, summarize


def exposition(busy_seconds: float, instances: int) -> str:
    return (
        "# TYPE serve_runner_busy_seconds counter\n"
        f"serve_runner_busy_seconds_total {busy_seconds}\n"
        "# TYPE serve_model_instances gauge\n"
        f'serve_model_instances{{stage="model"}} {instances}\n'
        f'serve_model_instances{{stage="head/model"}} 7\n'
    )


@pytest.mark.parametrize(("instances", "busy"), [(1, 0.8), (2, 0.8), (4, 0.25)])
def test_busy_fraction_counts_every_instance_of_the_default_stage(instances, busy):
    # Over 10 s, the instances together executed busy * instances * 10 seconds.
    rows = [
        {"time": 100.0, **parse(exposition(50.0, instances))},
        {"time": 110.0, **parse(exposition(50.0 + busy * instances * 10, instances))},
    ]
    assert rows[0]["model_instances"] == instances
    assert summarize(rows)["runner_busy"] == pytest.approx(busy)
