"""Short headless runs of the suite against the tiny-model service on loopback (seconds each),
and the report each one writes."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import httpx
import pytest
from PIL import Image

from loadtest.suite import report, runner, shapes
from tests.support.helpers import ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(server, out, **kw):
    report_args = {k: kw.pop(k) for k in ("slo_p99_ms", "target_rps") if k in kw}
    cfg = runner.RunConfig(host=server.url, out=out, **kw)
    return runner.run(cfg, ready_timeout=30, **report_args)


def served(url: str) -> float:
    """Requests the service answered so far, its own probes and scrapes left out."""
    from loadtest.common import samples

    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(
        value
        for name, labels, value in samples(text)
        if name == "serve_request_duration_seconds_count"
        and labels.get("route") not in ("/readyz", "/metrics")
    )


@pytest.fixture(scope="module")
def constant_run(server, tmp_path_factory):
    out = tmp_path_factory.mktemp("constant")
    params = shapes.ShapeParams(users=3, spawn_rate=10, run_time=5)
    before = served(server.url)
    summary = run(
        server,
        out,
        params=params,
        tags=["classify"],
        images_per_request=2,
        top_k=3,
    )
    summary["served_by_the_service"] = served(server.url) - before
    return out, summary


def test_report_folder_has_every_file(constant_run):
    out, _ = constant_run
    for name in (
        "locust_stats.csv",
        "locust_stats_history.csv",
        "locust_failures.csv",
        "locust.html",
        "requests.csv",
        "server_metrics.csv",
        "run.json",
        "summary.json",
        "summary.md",
        *report.PLOTS,
    ):
        assert (out / name).stat().st_size > 0, name
    assert "<html" in (out / "locust.html").read_text().lower()


def test_plots_are_real_pngs(constant_run):
    out, _ = constant_run
    for name in report.PLOTS:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        with Image.open(out / name) as im:
            im.verify()
            assert im.width >= 600 and im.height >= 300


def test_every_classify_api_ran_and_every_answer_was_well_formed(constant_run):
    out, summary = constant_run
    assert set(summary["endpoints"]) == {
        "/v1/classify [raw]",
        "/v1/classify [multipart]",
        "/v1/classify [b64]",
    }
    for name, e in summary["endpoints"].items():
        assert e["requests"] > 0 and e["failures"] == 0, name
    assert json.loads((out / "run.json").read_text())["locust_exit_code"] == 0


def test_summary_totals_are_locusts_numbers(constant_run):
    out, summary = constant_run
    with (out / "locust_stats.csv").open() as f:
        agg = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    t = summary["totals"]
    assert t["requests"] == int(agg["Request Count"]) > 0
    assert t["failures"] == int(agg["Failure Count"])
    assert t["p99_ms"] == float(agg["99%"]) and t["p50_ms"] == float(agg["50%"])
    assert t["rps"] == pytest.approx(float(agg["Requests/s"]))
    assert sum(e["requests"] for e in summary["endpoints"].values()) == t["requests"]
    # Every request the service answered, including those that ended in Locust's last second
    # and during its stop timeout (its periodic CSV missed them), and each in the request log.
    assert t["requests"] == summary["served_by_the_service"]
    assert summary["files"]["requests_logged"] == t["requests"]


def test_levels_agree_with_the_request_log(constant_run):
    out, summary = constant_run
    (lv,) = summary["levels"]  # one constant level
    assert lv["users"] == 3
    assert lv["rps"] * (lv["end"] - lv["start"]) == pytest.approx(lv["requests"], rel=1e-3)
    assert lv["p50_ms"] <= lv["p95_ms"] <= lv["p99_ms"]
    assert 0 < lv["requests"] <= summary["files"]["requests_logged"]


def test_server_side_metrics_were_scraped(constant_run):
    out, summary = constant_run
    srv = summary["server"]
    # multipart and b64 requests carry 2 images, so batches hold at least 1 image on average
    assert srv["mean_batch_size"] >= 1.0
    assert 0.0 < srv["runner_busy"] <= 1.0
    assert {"queue_depth_preprocess", "queue_depth_model"} <= set(srv)
    assert "mean batch size" in (out / "summary.md").read_text()


def test_report_rebuilds_from_locust_history_alone(constant_run, tmp_path):
    out, summary = constant_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for f in copy.glob("requests*.csv"):
        f.unlink()
    for f in (*copy.glob("*.png"), copy / "summary.json"):
        f.unlink()
    rebuilt = report.build(copy)
    assert rebuilt["totals"] == summary["totals"]
    assert rebuilt["files"]["requests_logged"] == 0
    (lv,) = rebuilt["levels"]
    assert lv["users"] == 3 and lv["requests"] > 0
    assert all((copy / p).read_bytes()[:8] == PNG_MAGIC for p in report.PLOTS)


@pytest.mark.parametrize("processes", [0, 2])
def test_step_run_finds_levels_and_a_capacity(server, tmp_path, processes):
    # With worker processes, each logs its own share of the users: the levels are the plan's.
    params = shapes.ShapeParams(step_users=1, step_time=3, steps=3, spawn_rate=50)
    summary = run(
        server,
        tmp_path,
        shape="step",
        params=params,
        tags=["classify-raw"],
        processes=processes,
        slo_p99_ms=10_000,
        target_rps=1000,
    )
    assert [lv["users"] for lv in summary["levels"]] == [1, 2, 3]
    c = summary["capacity"]
    best = max(summary["levels"], key=lambda lv: lv["ok_rps"])
    # A generous objective on loopback: no level breaks it, so the best level is the capacity.
    assert c["per_replica_rps"] == pytest.approx(best["ok_rps"], abs=1e-3)
    assert not c["limit_reached"]
    assert c["replicas"] == -(-1000 // (c["per_replica_rps"] * 0.8))
    assert c["hpa_target_average_value"] >= 1
    assert "## Capacity" in (tmp_path / "summary.md").read_text()


def test_open_loop_sends_at_the_offered_rate_not_as_fast_as_possible(server, tmp_path):
    # 10 req/s offered for 4 s: Poisson counts beyond 3x the mean are practically impossible,
    # while a closed loop on loopback does hundreds in that time.
    params = shapes.ShapeParams(users=2, spawn_rate=10, run_time=4)
    summary = run(server, tmp_path, params=params, arrival_rate=10.0)
    assert summary["run"]["arrival_rate"] == 10.0
    assert 0 < summary["totals"]["requests"] <= 120
    assert summary["totals"]["failures"] == 0


SPIKE = shapes.ShapeParams(users=1, spike_users=3, spike_at=3, spike_duration=3, run_time=9)
SOAK = shapes.ShapeParams(users=2, ramp_time=1, run_time=5)


@pytest.mark.parametrize(
    ("shape", "params", "processes", "levels"),
    # Soak: its ramp is not a level.
    [("spike", SPIKE, 2, [1, 3, 1]), ("soak", SOAK, 0, [2])],
    ids=["spike-2-processes", "soak"],
)
def test_spike_and_soak_run_to_their_end(server, tmp_path, shape, params, processes, levels):
    summary = run(server, tmp_path, shape=shape, params=params, processes=processes)
    assert summary["run"]["locust_exit_code"] == 0
    assert summary["totals"]["requests"] > 0 and summary["totals"]["failures"] == 0
    # Every worker process sent load and logged it.
    assert len(list(tmp_path.glob("requests-*.csv"))) == processes
    assert [lv["users"] for lv in summary["levels"]] == levels


def test_cli_runs_and_refuses_an_impossible_shape(server, tmp_path):
    cmd = [sys.executable, "-m", "loadtest", "run", "--host", server.url, "--out", str(tmp_path)]
    bad = subprocess.run(
        [*cmd, "--shape", "spike", "--users", "4", "--spike-users", "2"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert bad.returncode == 2 and "spike_users must exceed" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--shape", "soak", "--ramp-time", "30", "--run-time", "20"], "ramp_time"),
        (["run", "--shape", "step", "--steps", "0"], "steps must be positive"),
        (["run", "--spawn-rate", "0"], "spawn_rate must be positive"),
        (["run", "--images-per-request", "0"], "--images-per-request must be at least 1"),
        (["run", "--top-k", "0"], "--top-k must be at least 1"),
        (["run", "--arrival-rate", "-1"], "--arrival-rate must not be negative"),
        (["run", "--max-in-flight", "0"], "--max-in-flight must be at least 1"),
        (["run", "--slo-p99-ms", "100", "--headroom", "1.5"], "--headroom must be in (0, 1]"),
        (["run", "--headroom", "0"], "--headroom must be in (0, 1]"),
        (["capacity", "--slo-p99-ms", "0"], "--slo-p99-ms must be positive"),
        (["capacity", "--slo-p99-ms", "500", "--max-error-rate", "2"], "--max-error-rate"),
        (["capacity", "--slo-p99-ms", "500", "--target-rps", "0"], "--target-rps must be"),
        (["capacity", "--slo-p99-ms", "500", "--steps", "0"], "steps must be positive"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(args, message, tmp_path, capsys, monkeypatch):
    from loadtest import __main__ as cli

    started = []
    monkeypatch.setattr(runner, "run", lambda *a, **kw: started.append(a))
    monkeypatch.setattr(runner, "local_service", lambda *a, **kw: started.append(a))
    where = ["--start-local"] if args[0] == "capacity" else ["--host", "http://127.0.0.1:9"]
    code = cli.main([args[0], *where, "--out", str(tmp_path / "r"), *args[1:]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and f"python -m loadtest {args[0]}: error:" in err
    assert not started and not (tmp_path / "r").exists()


def test_report_of_a_folder_without_a_run_says_so(tmp_path, capsys):
    from loadtest import __main__ as cli

    assert cli.main(["report", str(tmp_path), "--slo-p99-ms", "500"]) == 2
    assert "not a load-test report folder" in capsys.readouterr().err


def test_tags_that_match_no_user_are_reported_not_a_traceback(server, tmp_path):
    cmd = [sys.executable, "-m", "loadtest", "run", "--host", server.url, "--out", str(tmp_path)]
    bad = subprocess.run(
        [*cmd, "--tags", "no-such-tag", "--run-time", "3"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "no user class has a task with the chosen --tags" in bad.stderr


def test_the_grpc_target_and_in_flight_cap_reach_locust(tmp_path, monkeypatch):
    """``--grpc-target`` and ``--max-in-flight`` (docs/LOADTEST.md) are options of the CLI;
    with ``--start-local`` the service's gRPC port is a free one and the grpc user goes there."""
    import contextlib

    from loadtest import __main__ as cli

    seen: dict = {}

    def fake_run(cfg, *_a, **_kw):
        seen["command"] = runner.locust_command(cfg)
        raise RuntimeError("stop here")

    @contextlib.contextmanager
    def fake_local(env, *_a, **_kw):
        seen["env"] = env
        yield "http://127.0.0.1:9", 0

    monkeypatch.setattr(runner, "run", fake_run)
    monkeypatch.setattr(runner, "local_service", fake_local)
    out = str(tmp_path / "r")
    args = ["run", "--host", "http://h:1", "--out", out, "--tags", "grpc"]
    assert cli.main([*args, "--grpc-target", "h:2", "--max-in-flight", "3"]) == 1
    command = seen["command"]
    assert command[command.index("--grpc-target") + 1] == "h:2"
    assert command[command.index("--max-in-flight") + 1] == "3"

    assert cli.main(["run", "--start-local", "--out", out, "--tags", "grpc"]) == 1
    port = seen["env"]["SERVE_GRPC_PORT"]
    assert port != "8001"
    command = seen["command"]
    assert command[command.index("--grpc-target") + 1] == f"127.0.0.1:{port}"


def test_v2_and_tfserving_users_against_the_service(server, tmp_path):
    params = shapes.ShapeParams(users=2, spawn_rate=10, run_time=3)
    summary = run(
        server, tmp_path, params=params, tags=["v2", "tfserving"], images_per_request=2, top_k=3
    )
    e = summary["endpoints"]
    for name in ("/v2/models/{name}/infer", "/v1/models/{name}:predict"):
        assert e[name]["requests"] > 0 and e[name]["failures"] == 0, (name, e)
    assert e["/v1/models"]["failures"] == 0  # the model name came from /v1/models


def test_jobs_user_against_the_service(server, tmp_path):
    if "/v1/jobs" not in httpx.get(server.url + "/openapi.json", timeout=30).json()["paths"]:
        pytest.skip("this build of the service has no /v1/jobs")
    params = shapes.ShapeParams(users=2, spawn_rate=10, run_time=3)
    summary = run(server, tmp_path, params=params, tags=["jobs"])
    e = summary["endpoints"]
    assert e["job (submit to result)"]["requests"] > 0
    assert summary["totals"]["failures"] == 0, e


def test_the_load_generators_cpu_is_sampled_with_each_scrape(constant_run):
    out, summary = constant_run
    (level,) = summary["levels"]
    assert 0.0 < level["server"]["cpu_loadgen"] < 2.0  # cores kept busy by Locust
    assert "cpu_service" not in level["server"]  # the service was not started by the run
    with (out / "server_metrics.csv").open() as f:
        seconds = [float(r["cpu_seconds_loadgen"]) for r in csv.DictReader(f)]
    assert seconds == sorted(seconds) and seconds[-1] > 0
    assert "Locust CPU" in (out / "summary.md").read_text()


def test_a_local_service_is_started_ready_and_its_processes_sampled(tiny_model_file, tmp_path):
    from loadtest.suite.scrape import tree_cpu_sampler

    env = {"SERVE_WEIGHTS": str(tiny_model_file), "SERVE_FRONTEND_PROCESSES": "1"}
    with runner.local_service(env, tmp_path / "service.log", timeout=120) as (url, pid):
        assert httpx.get(url + "/readyz", timeout=10).status_code == 200
        # The supervisor, its front end and the accelerator process, which loaded a model.
        assert tree_cpu_sampler(pid)() > 0.5


def test_the_images_of_loadtest_images_are_the_ones_the_report_names(tmp_path, monkeypatch):
    """``LOADTEST_IMAGES`` picks the images (docs/LOADTEST.md); run.json must say so, not
    "built-in"."""
    from loadtest import __main__ as cli

    seen = []

    def fake_run(cfg, *_a, **_kw):
        seen.append(cfg.images_dir)
        cfg.out.mkdir(exist_ok=True)
        (cfg.out / "summary.md").write_text("")
        return {"totals": {"requests": 1}}

    monkeypatch.setattr(runner, "run", fake_run)
    monkeypatch.setenv("LOADTEST_IMAGES", str(tmp_path / "set"))
    args = ["run", "--host", "http://h:1", "--out", str(tmp_path / "r")]
    assert cli.main(args) == 0 and seen == [str(tmp_path / "set")]
    assert cli.main([*args, "--images-dir", "other"]) == 0 and seen[-1] == "other"
