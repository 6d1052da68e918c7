"""The chart on Kubernetes 1.20 through the newest: API versions from .Capabilities, and every
object valid under 1.20's own schemas (tests/chart/k8s-v1.20-openapi.json, written by
scripts/k8s_openapi_subset.py from the v1.20 tree `make e2e` builds and runs).

The newest schemas are checked by test_render_validate.py (helm's default Kubernetes version
is the newest); `make e2e` installs the chart on a real 1.20.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jsonschema
import pytest

from tests.chart.chart_helpers import (
    CI_VALUES,
    CRD_KINDS,
    LOCUST_CHART,
    PLATFORM_VALUES,
    helm,
    one,
    render,
    server_container,
)

SCHEMA_FILE = Path(__file__).with_name("k8s-v1.20-openapi.json")
OLDEST = "1.20.2"
# gRPC probes need 1.24: the chart refuses them on 1.20 (tested below).
SHIPPED = [(), *[(v,) for v in PLATFORM_VALUES + CI_VALUES if "grpc-probes" not in v]]
HPA = ("autoscaling.enabled=true", "autoscaling.kind=hpa")


@functools.cache
def schema_1_20() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


def errors_1_20(obj: dict) -> list[str]:
    doc = schema_1_20()
    key = f"{obj['apiVersion']}/{obj['kind']}"
    if key not in doc["kinds"]:
        return [f"{key} does not exist in Kubernetes {doc['kubernetesVersion']}"]
    schema = {"$ref": f"#/definitions/{doc['kinds'][key]}", "definitions": doc["definitions"]}
    validator = jsonschema.Draft7Validator(schema)
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    return [
        f"{name} @ {'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(obj)
    ]


def check_1_20(objs: list[dict]) -> None:
    errors = [
        e for o in objs if (o["apiVersion"], o["kind"]) not in CRD_KINDS for e in errors_1_20(o)
    ]
    assert not errors, "\n".join(errors)


def test_the_schema_file_is_kubernetes_1_20():
    assert schema_1_20()["kubernetesVersion"] == "v1.20.2"


@pytest.mark.parametrize("values", SHIPPED, ids=lambda v: v[0] if v else "defaults")
def test_shipped_values_are_valid_on_1_20(values):
    sets = HPA if "keda" not in str(values) else ()
    check_1_20(render(values, sets, kube_version=OLDEST))


def test_locust_chart_is_valid_on_1_20():
    check_1_20(render(chart=LOCUST_CHART, kube_version=OLDEST))


@pytest.mark.parametrize(
    ("version", "hpa", "pdb"),
    [
        ("1.20.2", "autoscaling/v2beta2", "policy/v1beta1"),
        ("1.21.0", "autoscaling/v2beta2", "policy/v1"),
        ("1.23.0", "autoscaling/v2", "policy/v1"),
        ("", "autoscaling/v2", "policy/v1"),  # helm's default: the newest
    ],
)
def test_hpa_and_pdb_api_versions_follow_the_cluster(version, hpa, pdb):
    objs = render(sets=(*HPA, "autoscaling.minReplicas=2"), kube_version=version)
    assert one(objs, "HorizontalPodAutoscaler")["apiVersion"] == hpa
    assert one(objs, "PodDisruptionBudget")["apiVersion"] == pdb


def test_gpu_limit_is_a_quoted_quantity():
    limits = server_container(render())["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    assert (
        'nvidia.com/gpu: "1"'
        in helm("template", "rel", str(LOCUST_CHART.parent / "resnet-serve")).stdout
    )


def test_1_20_schema_refuses_a_bare_number_for_a_quantity():
    """What server-side apply refuses on 1.20: the validator is as strict."""
    objs = render(kube_version=OLDEST)
    deployment = one(objs, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"
    ] = 1
    deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["grpc"] = {"port": 1}
    errors = errors_1_20(deployment)
    assert any("nvidia.com/gpu" in e and "not of type 'string'" in e for e in errors), errors
    assert any("'grpc' was unexpected" in e for e in errors), errors


def test_grpc_probes_on_a_cluster_before_1_24_fail_with_the_reason():
    out = helm(
        "template", "rel", str(LOCUST_CHART.parent / "resnet-serve"),
        "--kube-version", OLDEST, "--set", "probes.grpc=true", check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "probes.grpc=true needs Kubernetes 1.24 or newer" in out.stderr
    assert "v1.20.2" in out.stderr


def ports_of(obj: dict) -> list[dict]:
    if obj["kind"] == "Service":
        return obj["spec"]["ports"]
    spec = obj.get("spec", {})
    spec = spec if obj["kind"] == "Pod" else spec.get("template", {}).get("spec", {})
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    return [p for c in containers for p in c.get("ports", [])]


@pytest.mark.parametrize(
    "objs",
    [
        render(sets=("redis.mode=internal",)),
        render(chart=LOCUST_CHART, sets=("master.serviceType=NodePort",)),
    ],
    ids=["resnet-serve", "locust"],
)
def test_every_port_names_its_protocol(objs):
    """(port, protocol) is the key of these lists: server-side apply before Kubernetes 1.20's
    fix refuses an element without it ("omits key field protocol")."""
    ports = [(o["metadata"]["name"], p) for o in objs for p in ports_of(o)]
    assert len(ports) >= 5
    assert all(p.get("protocol") == "TCP" for _, p in ports), ports
