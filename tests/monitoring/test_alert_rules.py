"""The alert rules and the dashboard the chart ships: checked and unit-tested by the real
promtool, the same in the PrometheusRule and the Grafana ConfigMap as in their files, and each
alert documented in docs/OPERATIONS.md. Their queries run against a real Prometheus scraping
the real service in test_real_prometheus.py."""

from __future__ import annotations

import importlib
import json
import re

import yaml

from service import errors
from tests.chart.chart_helpers import CHART, ROOT, render
from tests.monitoring.promtools import promtool

ALERTS = CHART / "monitoring" / "alerts.yaml"
DASHBOARD = CHART / "monitoring" / "dashboard.json"
UNIT_TESTS = ROOT / "tests" / "monitoring" / "alerts-test.yaml"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def test_promtool_checks_the_rules_file():
    out = promtool("check", "rules", str(ALERTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in out.stdout


def test_promtool_unit_tests_fire_and_do_not_fire_as_written():
    out = promtool("test", "rules", UNIT_TESTS.name, cwd=str(UNIT_TESTS.parent))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_has_a_unit_test_and_the_annotations_operators_need():
    tested = {
        case["alertname"]
        for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    docs = OPERATIONS.read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", docs, re.M)}
    for rule in alert_rules():
        name = rule["alert"]
        assert name in tested, f"{name}: no promtool test where it fires"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        notes = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(notes), name
        page, anchor = notes["runbook_url"].split("#")
        assert page == "docs/OPERATIONS.md" and anchor == name.lower(), notes["runbook_url"]
        assert anchor in anchors, f"docs/OPERATIONS.md has no section {name}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_prometheus_rule_is_off_by_default_and_carries_the_files_groups(tmp_path):
    assert not [o for o in render() if o["kind"] == "PrometheusRule"]
    base = "https://git.example/resnet-serve/blob/v1/docs/OPERATIONS.md"
    sets = (
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.labels.release=kps",
        f"metrics.prometheusRule.runbookBaseUrl={base}",
    )
    (rule,) = [o for o in render(sets=sets) if o["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kps"
    expected = yaml.safe_load(ALERTS.read_text().replace("docs/OPERATIONS.md", base))
    assert rule["spec"]["groups"] == expected["groups"]
    # What the operator hands Prometheus is valid for promtool as well.
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    out = promtool("check", "rules", str(rendered))
    assert out.returncode == 0, out.stdout + out.stderr


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_queries(board: dict | None = None) -> list[tuple[str, str]]:
    """(panel title, expression) of every query of the dashboard."""
    board = board or dashboard()
    return [
        (p["title"], t["expr"]) for p in board["panels"] if p["type"] != "row" for t in p["targets"]
    ]


def test_the_dashboard_configmap_is_off_by_default_and_labelled_for_the_sidecar():
    assert not [o for o in render() if o["metadata"]["name"].endswith("-dashboard")]
    objs = render(("ci/servicemonitor-values.yaml",))
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and "resnet-serve.json" in o["data"]]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Inference"}
    assert json.loads(cm["data"]["resnet-serve.json"]) == dashboard()
    other = render(sets=("metrics.dashboard.enabled=true", "metrics.dashboard.namespace=grafana"))
    (cm,) = [o for o in other if o["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["namespace"] == "grafana"


def test_the_dashboard_answers_the_operators_questions():
    board = dashboard()
    titles = [p["title"] for p in board["panels"]]
    assert [p["title"] for p in board["panels"] if p["type"] == "row"] == [
        "Is it up",
        "How much, how fast",
        "Where the time goes",
        "How full",
        "Is the GPU busy",
        "Jobs",
    ]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and len(titles) == len(set(titles))
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "job", "namespace", "instance", "pod"}
    series = " ".join(expr for _, expr in panel_queries(board))
    for name in (
        "serve_request_success_total",
        "serve_request_duration_seconds_bucket",
        "serve_queue_duration_seconds_bucket",
        "serve_inference_duration_seconds_bucket",
        "serve_batch_size_bucket",
        "serve_runner_busy_ratio",
        "serve_request_failure_total",
        "serve_frontend_processes",
        "nv_gpu_utilization",
        "nv_gpu_memory_used_bytes",
        "serve_jobs_total",
    ):
        assert name in series, name
    for title, expr in panel_queries(board):
        for selector in re.findall(r"\b(?:serve|nv)_\w+\{([^}]*)\}", expr):
            assert 'pod=~"$pod"' in selector and 'job=~"$job"' in selector, (title, expr)


def test_the_503_504_panel_lists_every_refusal_and_deadline_code():
    (expr,) = [e for t, e in panel_queries() if t == "503 and 504 by reason"]
    listed = set(re.search(r'reason=~"([^"]+)"', expr).group(1).split("|"))
    for path in (ROOT / "service").rglob("*.py"):  # every module that names an error code
        if "default_code =" in path.read_text():
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            importlib.import_module(module)
    codes = {cls.default_code for cls in _subclasses(errors.ServeError) if cls.status in (503, 504)}
    assert "jobs_full" in codes and "deadline_exceeded" in codes
    assert listed == codes


def _subclasses(cls: type) -> list[type]:
    return [c for s in cls.__subclasses__() for c in (s, *_subclasses(s))]


def test_every_request_panel_leaves_out_probes_and_scrapes():
    """Probes, scrapes and scans of unknown paths are no one's traffic or errors."""
    for title, expr in panel_queries():
        if "serve_request_" in expr:
            assert 'route!~"/metrics|/healthz|/readyz' in expr, title
