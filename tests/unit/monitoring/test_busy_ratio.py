"""``serve_runner_busy_ratio`` follows the busiest model stage, of any pipeline."""

from __future__ import annotations

import time

from prometheus_client import generate_latest

from service.metrics import Metrics


def _ratio(metrics: Metrics) -> float:
    text = generate_latest(metrics.registry).decode()
    (line,) = [x for x in text.splitlines() if x.startswith("serve_runner_busy_ratio ")]
    return float(line.split()[1])


def test_a_busy_runner_of_another_pipeline_is_not_an_idle_runner():
    """With traffic on a pipeline other than the default (SERVE_PIPELINE, or one named per
    request), the default stage's window alone would read 0 while runners work, and the
    ResnetServeRunnerIdleWhileQueued alert would fire on a healthy pod."""
    metrics = Metrics(window_s=1.0)
    other = metrics.stage_busy_window("other/tiny")
    token = other.begin()
    time.sleep(0.2)
    other.end(token)
    assert metrics._stage_windows["model"].ratio() == 0.0  # the default pipeline is idle
    assert _ratio(metrics) > 0.1
    # The decode and top-k stages' work windows are not runners, however busy.
    metrics.stage_work_window("decode").add(0.9)
    assert _ratio(metrics) < 0.5
