"""Every Locust process plans the same load: the local process, `--processes` children and the
chart's worker pods, which Locust gives no -t (and the pods no -u or -r either)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loadtest.suite import runner, shapes
from tests.support.helpers import ROOT

# Parses a Locust command line as Locust does (in a process of its own: Locust's gevent
# patching must come first), optionally as a worker process sees it (locust.main drops
# run_time in `--processes` children), and prints the plan and the open-loop rate per user
# the suite's hooks compute from it.
PLAN = r"""
import json, sys
from locust import argument_parser
import loadtest.suite.locustfile  # registers the suite's options
from loadtest.suite import shapes
from loadtest.suite.options import stages_of, users_of
cmd, as_worker = json.loads(sys.argv[1]), sys.argv[2] == "1"
o = argument_parser.parse_options(cmd[cmd.index("-f"):])
if as_worker:
    o.worker, o.run_time = True, None
try:
    stages = stages_of(o)
except ValueError as exc:
    print(json.dumps(f"ValueError: {exc}"))
else:
    most = shapes.max_users(stages) if stages else users_of(o)
    plan = [[s.duration, s.users, s.spawn_rate] for s in stages or []]
    print(json.dumps({"plan": plan, "rate_per_user": o.arrival_rate / most}))
"""


def seen_by_locust(cmd: list[str], as_worker: bool = False):
    out = subprocess.run(
        [sys.executable, "-c", PLAN, json.dumps(cmd), "1" if as_worker else "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


SHAPES = [
    ("spike", shapes.ShapeParams(users=2, spike_users=8, spike_at=4, spike_duration=4, run_time=9)),
    ("soak", shapes.ShapeParams(users=4, ramp_time=5, run_time=20)),
    ("constant", shapes.ShapeParams(users=5, run_time=20)),
]


@pytest.mark.parametrize("as_worker", [False, True], ids=["local", "worker"])
@pytest.mark.parametrize(("shape", "params"), SHAPES, ids=[s for s, _ in SHAPES])
def test_every_process_of_a_run_sees_its_plan(tmp_path, shape, params, as_worker):
    cfg = runner.RunConfig(
        host="http://127.0.0.1:1",
        out=tmp_path,
        shape=shape,
        params=params,
        arrival_rate=20.0,
        processes=2 if as_worker else 0,
    )
    stages = cfg.stages()
    seen = seen_by_locust(runner.locust_command(cfg), as_worker)
    assert seen["plan"] == [[s.duration, s.users, s.spawn_rate] for s in stages]
    # Open loop: each user's share of the total rate, whatever process it runs in.
    assert seen["rate_per_user"] == 20.0 / shapes.max_users(stages)


# Builds a user of the suite from a command line and prints the connections its HTTP session
# was made with.
CONNECTIONS = r"""
import json, sys
from locust import argument_parser
from locust.contrib import fasthttp
from locust.env import Environment
import loadtest.suite.locustfile as lf
made = []
init = fasthttp.FastHttpSession.__init__
def record(self, *a, **kw):
    made.append(kw["concurrency"])
    init(self, *a, **kw)
fasthttp.FastHttpSession.__init__ = record
o = argument_parser.parse_options(["-f", lf.__file__, *json.loads(sys.argv[1])])
lf.ClassifyRawUser.host = "http://127.0.0.1:1"
lf.ClassifyRawUser(Environment(user_classes=[lf.ClassifyRawUser], parsed_options=o))
print(json.dumps(made))
"""


@pytest.mark.parametrize("in_flight", [64, 200])
def test_an_open_loop_user_has_a_connection_for_each_request_in_flight(in_flight):
    out = subprocess.run(
        [sys.executable, "-c", CONNECTIONS, json.dumps(["--max-in-flight", str(in_flight)])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [in_flight]


@pytest.mark.parametrize(("run_time", "limit"), [(2.5, "3s"), (20, "20s"), (0.2, "1s")])
def test_locusts_time_limit_never_cuts_the_plan_short(tmp_path, run_time, limit):
    """Locust's -t takes whole seconds: a fractional run time rounds up, the plan ends it."""
    cfg = runner.RunConfig(
        host="http://127.0.0.1:1", out=tmp_path, params=shapes.ShapeParams(run_time=run_time)
    )
    cmd = runner.locust_command(cfg)
    assert cmd[cmd.index("-t") + 1] == limit
    assert cmd[cmd.index("--shape-run-time") + 1] == str(run_time)
