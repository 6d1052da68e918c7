"""Shared helpers of the chart tests: the pinned tools, rendering, offline schema validation."""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

import jsonschema
import yaml
from kubernetes_validate import utils as kv
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "resnet-serve"
LOCUST_CHART = ROOT / "charts" / "locust"
TOOLS = ROOT / ".tools"
HELM = TOOLS / "bin" / "helm"
KUBECTL = TOOLS / "bin" / "kubectl"
HADOLINT = TOOLS / "venv" / "bin" / "hadolint"
CHECKOV = TOOLS / "venv" / "bin" / "checkov"

# Recent Kubernetes minor versions the rendered objects must be valid for (strict schemas:
# unknown fields fail). 1.30 is about the oldest still supported by the managed services.
K8S_VERSIONS = ("1.30.0", "1.32.0", "1.34.0", "1.37.0")
# Custom resources: no OpenAPI schema ships for them; checked by tests of their own.
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),  # tests/monitoring/test_alert_rules.py
}

PLATFORM_VALUES = sorted(p.name for p in CHART.glob("values-*.yaml"))
CI_VALUES = sorted(f"ci/{p.name}" for p in (CHART / "ci").glob("*.yaml"))
GPU_PLATFORM_VALUES = [v for v in PLATFORM_VALUES if v != "values-cpu.yaml"]


def require(tool: Path) -> Path:
    if not tool.exists():
        raise AssertionError(f"{tool} is missing: run `make tools` (make test does it)")
    return tool


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(require(HELM)), *args], capture_output=True, text=True, check=check, timeout=120
    )


def value_args(values: tuple[str, ...], sets: tuple[str, ...], chart: Path = CHART) -> list[str]:
    args: list[str] = []
    for v in values:
        args += ["-f", str(chart / v)]
    for s in sets:
        args += ["--set", s]
    return args


def lint(
    values: tuple[str, ...] = (), sets: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return helm("lint", "--strict", str(CHART), *value_args(values, sets), check=False)


@functools.cache
def render_text(
    values: tuple[str, ...] = (),
    sets: tuple[str, ...] = (),
    release: str = "rel",
    namespace: str = "serving",
    chart: Path = CHART,
    kube_version: str = "",
) -> str:
    out = helm(
        "template",
        release,
        str(chart),
        "--namespace",
        namespace,
        *value_args(values, sets, chart),
        *(["--kube-version", kube_version] if kube_version else []),
        check=False,
    )
    if out.returncode != 0:
        raise AssertionError(f"helm template failed for {values} {sets}:\n{out.stderr}")
    return out.stdout


def render(
    values: tuple[str, ...] = (),
    sets: tuple[str, ...] = (),
    release: str = "rel",
    namespace: str = "serving",
    chart: Path = CHART,
    kube_version: str = "",
) -> list[dict]:
    """Rendered objects (fresh copies: tests may not share mutations). ``kube_version``:
    the cluster's version the chart is rendered for (helm's own default when empty)."""
    text = render_text(values, sets, release, namespace, chart, kube_version)
    return [d for d in yaml.safe_load_all(text) if d]


def find(objs: list[dict], kind: str, component: str | None = None) -> list[dict]:
    found = [o for o in objs if o["kind"] == kind]
    if component is not None:
        found = [
            o
            for o in found
            if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        ]
    return found


def one(objs: list[dict], kind: str, component: str | None = "server") -> dict:
    found = find(objs, kind, component)
    assert len(found) == 1, f"expected one {kind} ({component}), found {len(found)}"
    return found[0]


def server_container(objs: list[dict]) -> dict:
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "server")


def env_of(container: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def pod_specs(objs: list[dict]) -> list[tuple[str, dict]]:
    """(name, pod spec) of every pod the release can create."""
    out = []
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out.append((o["metadata"]["name"], o["spec"]["template"]["spec"]))
        elif o["kind"] == "Pod":
            out.append((o["metadata"]["name"], o["spec"]))
    return out


@functools.cache
def _validator(version: str, api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    """The strict schema of one kind, as kubernetes_validate.validate builds it, cached."""
    schema_version = [v for v in kv.all_versions() if kv.major_minor(v) <= kv.major_minor(version)][
        -1
    ]
    schema_dir = f"v{schema_version}-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = kv.schema_contents(
        f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{group}.json", version
    )
    definitions = kv.schema_contents(
        f"kubernetes-json-schema/{schema_dir}/_definitions.json", version
    )
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validation_errors(obj: dict, version: str) -> list[str]:
    try:
        validator = _validator(version, obj["apiVersion"], obj["kind"])
    except FileNotFoundError:
        return [f"no schema for {obj['apiVersion']} {obj['kind']} in Kubernetes {version}"]
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    return [
        f"{name} @ {'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(obj)
    ]
