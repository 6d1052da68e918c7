"""The report's runner busy fraction: busy seconds over the wall time, per runner instance."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from loadtest.suite.scrape import parse, summarize, tree_cpu_sampler


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


def test_the_server_plot_counts_busy_per_instance_as_the_summary_does():
    from loadtest.suite.report import runner_busy_series

    # Two instances, one busy all the time: 50 %, as in summary.md, not 100 % (busy s / s).
    rows = [{"time": 100.0 + t, **parse(exposition(50.0 + t, 2))} for t in (0.0, 1.0, 2.0, 3.0)]
    assert runner_busy_series(rows) == pytest.approx([0.5, 0.5, 0.5])
    assert summarize(rows)["runner_busy"] == pytest.approx(0.5)


def test_cpu_columns_are_cores_kept_busy_over_the_window():
    rows = [
        {"time": 100.0, "cpu_seconds_service": 40.0, "cpu_seconds_loadgen": 5.0},
        {"time": 104.0, "cpu_seconds_service": 46.0, "cpu_seconds_loadgen": 7.0},
    ]
    out = summarize(rows)
    assert out["cpu_service"] == pytest.approx(1.5)
    assert out["cpu_loadgen"] == pytest.approx(0.5)


def test_the_cpu_sampler_counts_children_and_keeps_their_seconds_after_they_exit():
    # A parent that starts a child burning ~0.6 s of CPU, then waits a little after it exits.
    burn = (
        "import subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', "
        "'import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.6: pass'])\n"
        "c.wait(); time.sleep(1.5)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", burn])
    sample = tree_cpu_sampler(proc.pid)
    values = []
    while proc.poll() is None:
        values.append(sample())
        time.sleep(0.05)
    after_exit = sample()
    assert values == sorted(values), "the sum never goes down when a child exits"
    assert after_exit >= values[-1] >= 0.5  # the child's last 50 ms may go unseen
