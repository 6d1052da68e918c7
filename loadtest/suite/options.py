"""The load-test suite's command line, its load shape and its request log, beside the
locustfile (which imports them, so Locust finds the shape class and the options there).

Like the locustfile, this runs from a flat folder too (the Locust chart's ConfigMap).
"""

from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path

from locust import LoadTestShape, events

try:
    from loadtest.suite import shapes
except ImportError:  # flat folder (the chart's ConfigMap)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import shapes  # type: ignore[no-redef]


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    add = parser.add_argument
    add("--shape", choices=shapes.SHAPES, default="constant", help="load shape")
    # The plan's inputs where Locust gives a process no -t/-u/-r: its worker processes
    # (`--processes` children, the chart's worker pods) plan from these.
    add("--shape-run-time", type=shapes.seconds, default=0.0, help="plan: run time (0: -t)")
    add("--shape-users", type=int, default=0, help="plan: users (0: -u)")
    add("--shape-spawn-rate", type=float, default=0.0, help="plan: users/s (0: -r)")
    add("--step-users", type=int, default=2, help="step: users added per step")
    add("--step-time", type=shapes.seconds, default=30.0, help="step: seconds per step")
    add("--steps", type=int, default=5, help="step: number of steps")
    add("--spike-users", type=int, default=16, help="spike: users during the spike")
    add("--spike-at", type=shapes.seconds, default=20.0, help="spike: seconds before it")
    add("--spike-duration", type=shapes.seconds, default=10.0, help="spike: its length")
    add("--ramp-time", type=shapes.seconds, default=60.0, help="soak: ramp-up seconds")
    add("--arrival-rate", type=float, default=0.0, help="open loop: requests/s (0: closed)")
    add("--max-in-flight", type=int, default=64, help="open loop: cap per user")
    add("--think-time", type=float, default=0.0, help="closed loop: seconds between requests")
    add("--images-dir", default=os.environ.get("LOADTEST_IMAGES", ""), help="image folder")
    add("--images-per-request", type=int, default=1, help="multipart/b64/v2/tfserving/jobs")
    add("--top-k", type=int, default=5, help="classes per image")
    add("--model-name", default="", help="model name for v2/tfserving (default: /v1/models)")
    add("--job-timeout", type=float, default=60.0, help="jobs: seconds to wait for a result")
    add("--request-log", default="", help="CSV of every request (one file per process)")
    add("--seed", type=int, default=0, help="seed of the image choice and arrival gaps")
    add("--grpc-target", default="", help="grpc: host:port (default: --host's host, port 8001)")


def run_time_of(o) -> float:
    """Locust's -t (the web UI may change it on the master), else --shape-run-time."""
    return float(o.run_time or o.shape_run_time or 0)


def users_of(o) -> int:
    return max(1, int(o.num_users or o.shape_users or 1))


def spawn_rate_of(o) -> float:
    return float(o.spawn_rate or o.shape_spawn_rate or 1)


def options_to_params(o) -> shapes.ShapeParams:
    return shapes.ShapeParams(
        users=users_of(o),
        spawn_rate=spawn_rate_of(o),
        run_time=run_time_of(o),
        step_users=o.step_users,
        step_time=o.step_time,
        steps=o.steps,
        spike_users=o.spike_users,
        spike_at=o.spike_at,
        spike_duration=o.spike_duration,
        ramp_time=o.ramp_time,
    )


def stages_of(o) -> list[shapes.Stage] | None:
    """The plan of the chosen shape; None: constant with no run time (runs until stopped)."""
    if o.shape == "constant" and not run_time_of(o):
        return None
    return shapes.plan(o.shape, options_to_params(o))


class PlannedShape(LoadTestShape):
    """Walks the plan of ``--shape``; ``-u``, ``-r`` and ``-t`` (or ``--shape-users``,
    ``--shape-spawn-rate``, ``--shape-run-time``) feed it."""

    use_common_options = True

    def tick(self):
        o = self.runner.environment.parsed_options
        # The master's options reach its workers with each spawn message, the suite's own
        # but not Locust's -t/-u/-r: copy those into the suite's, so workers plan alike.
        o.shape_run_time, o.shape_users, o.shape_spawn_rate = (
            run_time_of(o),
            users_of(o),
            spawn_rate_of(o),
        )
        stages = stages_of(o)
        if stages is None:
            return users_of(o), spawn_rate_of(o)
        stage = shapes.at(stages, self.get_run_time())
        return None if stage is None else (stage.users, stage.spawn_rate)


# A request's context key naming the composite request it is a part of (a job's submit and
# polls): the request log leaves such parts out, and logs the composite.
PART_OF = "part_of"


class RequestLog:
    """Every request as a CSV row: end time (unix s), name, response time (ms), ok, users;
    except the parts of a composite request (``PART_OF`` in their context)."""

    rows: list[tuple] = []
    path: Path | None = None

    @classmethod
    def start(cls, environment, path: Path) -> None:
        if environment.parsed_options.worker:  # one file per worker process
            path = path.with_name(f"{path.stem}-{os.getpid()}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        cls.path = path
        with path.open("w", newline="") as f:
            csv.writer(f).writerow(["time", "type", "name", "response_time_ms", "ok", "users"])

        def on_request(request_type, name, response_time, exception=None, context=None, **_kw):
            if context and PART_OF in context:
                return
            cls.rows.append(
                (
                    f"{time.time():.3f}",
                    request_type,
                    name,
                    f"{response_time:.2f}",
                    int(exception is None),
                    environment.runner.user_count if environment.runner else 0,
                )
            )
            if len(cls.rows) >= 500:
                cls.flush()

        environment.events.request.add_listener(on_request)
        environment.events.test_stop.add_listener(lambda **_kw: cls.flush())
        environment.events.quitting.add_listener(lambda **_kw: cls.flush())

    @classmethod
    def flush(cls) -> None:
        if cls.path is None or not cls.rows:
            return
        rows, cls.rows = cls.rows, []
        with cls.path.open("a", newline="") as f:
            csv.writer(f).writerows(rows)


def write_final_stats(environment, prefix: str) -> None:
    """Rewrite ``PREFIX_stats.csv`` and ``PREFIX_failures.csv`` from the final stats.

    Locust writes its CSVs once a second and not again when it quits, so the requests that
    ended in the last second and during ``--stop-timeout`` were missing from them (and from a
    report's totals). Its own file handles, still open, write to the replaced files."""
    from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, write in (
        ("_stats.csv", writer.requests_csv),
        ("_failures.csv", writer.failures_csv),
    ):
        path = Path(prefix + suffix)
        tmp = path.with_name(path.name + ".final")
        with tmp.open("w", newline="") as f:
            write(csv.writer(f))
        os.replace(tmp, path)
