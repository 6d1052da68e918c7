"""charts/locust: lint, render and strict validation for every shipped values file, schema
refusals, and what the master and workers are told. Uses the pinned helm from mk/tools.mk and
the offline Kubernetes schemas of the service chart's tests."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.chart.chart_helpers import HELM, K8S_VERSIONS, require, validation_errors

ROOT = Path(__file__).resolve().parents[2]

CHART = ROOT / "charts" / "locust"
CI_VALUES = sorted(f"ci/{p.name}" for p in (CHART / "ci").glob("*.yaml"))
SHIPPED = [(), *[(v,) for v in CI_VALUES]]
SUITE = ("locustfile.py", "shapes.py", "checks.py", "images.py")


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(require(HELM)), *args], capture_output=True, text=True, timeout=120, check=False
    )


def value_args(values: tuple[str, ...], sets: tuple[str, ...]) -> list[str]:
    return [a for v in values for a in ("-f", str(CHART / v))] + [
        a for s in sets for a in ("--set", s)
    ]


@functools.cache
def _render(values: tuple[str, ...], sets: tuple[str, ...]) -> str:
    out = helm("template", "lt", str(CHART), "--namespace", "load", *value_args(values, sets))
    assert out.returncode == 0, out.stderr
    return out.stdout


def render(values: tuple[str, ...] = (), sets: tuple[str, ...] = ()) -> list[dict]:
    return [d for d in yaml.safe_load_all(_render(values, sets)) if d]


def component(objs: list[dict], kind: str, name: str) -> dict:
    (found,) = [
        o
        for o in objs
        if o["kind"] == kind and o["metadata"]["labels"].get("app.kubernetes.io/component") == name
    ]
    return found


def container(objs: list[dict], name: str) -> dict:
    pod = component(objs, "Deployment", name)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    return c


@pytest.mark.parametrize("values", SHIPPED, ids=lambda v: v[0] if v else "defaults")
def test_shipped_values_lint_render_and_validate(values):
    lint = helm("lint", "--strict", str(CHART), *value_args(values, ()))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    objs = render(values)
    assert {o["kind"] for o in objs} >= {"Deployment", "Service"}
    for version in K8S_VERSIONS:
        errors = [e for o in objs for e in validation_errors(o, version)]
        assert not errors, f"Kubernetes {version}:\n" + "\n".join(errors)


def test_configmap_carries_the_suite_and_it_runs_from_a_flat_folder(tmp_path):
    (cm,) = [o for o in render() if o["kind"] == "ConfigMap"]
    assert sorted(cm["data"]) == sorted(SUITE)
    for name in SUITE:
        assert cm["data"][name] == (ROOT / "loadtest" / "suite" / name).read_text().rstrip("\n")
        (tmp_path / name).write_text(cm["data"][name] + "\n")
    # Outside the repository, where `loadtest` is not importable: the locustfile imports its
    # neighbours and Locust lists its user classes.
    out = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(tmp_path / "locustfile.py"), "--list"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr
    for user in ("ClassifyRawUser", "ClassifyMultipartUser", "ClassifyB64User", "V2InferUser"):
        assert user in out.stdout


def test_master_and_workers_agree_on_ports_names_and_options():
    objs = render(sets=("workers.replicas=3", "test.tags={classify-b64,v2}"))
    master, worker = container(objs, "master"), container(objs, "worker")
    service = component(objs, "Service", "master")
    assert "--master" in master["args"] and "--expect-workers=3" in master["args"]
    assert f"--master-host={service['metadata']['name']}" in worker["args"]
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert f"--master-port={ports['workers']}" in worker["args"]
    assert f"--master-bind-port={ports['workers']}" in master["args"]
    for c in (master, worker):
        i = c["args"].index("--tags")
        assert c["args"][i + 1 : i + 3] == ["classify-b64", "v2"]
        assert "--locustfile=/mnt/locust/locustfile.py" in c["args"]
        assert "--shape=step" in c["args"]
    master_pod = component(objs, "Deployment", "master")["spec"]["template"]["metadata"]
    worker_pod = component(objs, "Deployment", "worker")["spec"]["template"]["metadata"]
    selector = service["spec"]["selector"]
    assert selector.items() <= master_pod["labels"].items()
    assert not selector.items() <= worker_pod["labels"].items()
    assert component(objs, "Deployment", "worker")["spec"]["replicas"] == 3


def test_headless_autostart_writes_reports_for_the_report_command():
    objs = render(("ci/headless-step-values.yaml",))
    args = container(objs, "master")["args"]
    assert "--autostart" in args and "--autoquit=600" in args
    assert {"--csv=/reports/locust", "--csv-full-history", "--html=/reports/locust.html"} <= set(
        args
    )
    assert "--step-time=2m" in args and "--steps=8" in args
    mounts = {m["mountPath"] for m in container(objs, "master")["volumeMounts"]}
    assert "/reports" in mounts
    assert "--autostart" not in container(render(), "master")["args"]


def test_images_from_a_claim_are_mounted_read_only():
    objs = render(("ci/open-loop-pvc-values.yaml",))
    for name in ("master", "worker"):
        c = container(objs, name)
        assert "--images-dir=/images" in c["args"] and "--arrival-rate=200" in c["args"]
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/images"]
        assert mount["readOnly"] and mount["subPath"] == "mixed"
        pod = component(objs, "Deployment", name)["spec"]["template"]["spec"]
        (vol,) = [v for v in pod["volumes"] if v["name"] == "images"]
        assert vol["persistentVolumeClaim"] == {"claimName": "loadtest-images", "readOnly": True}
        assert pod["tolerations"][0]["value"] == "load"


def test_existing_configmap_replaces_the_chart_copy():
    objs = render(("ci/spike-existing-configmap-values.yaml",))
    assert not [o for o in objs if o["kind"] == "ConfigMap"]
    for name in ("master", "worker"):
        pod = component(objs, "Deployment", name)["spec"]["template"]["spec"]
        (vol,) = [v for v in pod["volumes"] if v["name"] == "locustfile"]
        assert vol["configMap"]["name"] == "my-locustfile"


def test_every_container_is_locked_down():
    for o in render(("ci/open-loop-pvc-values.yaml",)):
        if o["kind"] != "Deployment":
            continue
        pod = o["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert sc["seccompProfile"]["type"] == "RuntimeDefault"
            assert c["resources"]["requests"]["cpu"]
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}


@pytest.mark.parametrize(
    "sets",
    [
        ("unknown=1",),
        ("test.shape=wave",),
        ("test.tags={classify-raw,nonsense}",),
        ("test.stepTime=soon",),
        ("images.source=pvc",),  # no claim
        ("targetHost=serve.example.org",),  # no scheme
        ("workers.replicas=0",),
        ("master.serviceType=Ingress",),
    ],
)
def test_schema_refuses_bad_values(sets):
    out = helm("template", "lt", str(CHART), *value_args((), sets))
    assert out.returncode != 0
    assert "values don't meet the specifications of the schema" in out.stderr
