"""values.schema.json rejects wrong types, unknown keys and bad enums: `helm lint` must fail."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.chart.chart_helpers import CHART, lint, render

BAD_VALUES = {
    "unknown top-level key": ("replicas=3", "additional properties 'replicas' not allowed"),
    "typo in a nested key": ("gpu.enable=true", "additional properties 'enable' not allowed"),
    "string for an integer": ("replicaCount=two", "/replicaCount"),
    "zero GPUs": ("gpu.count=0", "/gpu/count"),
    "unknown architecture": ("model.arch=resnet18", "/model/arch"),
    "unknown weights source": ("weights.source=s3", "/weights/source"),
    "weights file of the wrong type": ("weights.file=w.pt", "/weights/file"),
    "short sha256": ("weights.url.sha256=abc", "/weights/url/sha256"),
    "unknown redis mode": ("redis.mode=cluster", "/redis/mode"),
    "redis url variable without prefix": ("redis.urlEnvName=REDIS_URL", "/redis/urlEnvName"),
    "unknown autoscaler": ("autoscaling.kind=vpa", "/autoscaling/kind"),
    "bad service type": ("service.type=Ingress", "/service/type"),
    "bad pull policy": ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    "unknown security context field": ("securityContext.runAsRoot=true", "runAsRoot"),
    "port out of range": ("containerPort=70000", "/containerPort"),
    "percent pdb of zero": (
        "podDisruptionBudget.maxUnavailable=0",
        "/podDisruptionBudget/maxUnavailable",
    ),
    "a hostPath kernel cache": ("kernelCache.type=hostPath", "/kernelCache/type"),
    "a CUDA cache above the driver's maximum": (
        "kernelCache.cudaMaxSizeBytes=8589934592",
        "/kernelCache/cudaMaxSizeBytes",
    ),
    "a typo in the Locust peer": ("networkPolicy.locust.enable=true", "'enable' not allowed"),
    "a test image without a tag": ("tests.image.tag=", "/tests/image/tag"),
    "an ephemeral extra that is no size": ("ephemeralStorageExtra=lots", "/ephemeralStorageExtra"),
    "gRPC port out of range": ("grpc.containerPort=70000", "/grpc/containerPort"),
    "gRPC Service port of zero": ("grpc.servicePort=0", "/grpc/servicePort"),
    "a typo under grpc": ("grpc.enable=false", "additional properties 'enable' not allowed"),
    "an appProtocol with spaces": ("grpc.appProtocol=h2 c", "/grpc/appProtocol"),
    "a typo in the gRPC Ingress": (
        "grpc.ingress.host=x",
        "additional properties 'host' not allowed",
    ),
    "gRPC probes that are no boolean": ("probes.grpc=maybe", "/probes/grpc"),
}


@pytest.mark.parametrize("bad, expected", BAD_VALUES.values(), ids=list(BAD_VALUES))
def test_schema_rejects_bad_values(bad, expected):
    result = lint(sets=(bad,))
    assert result.returncode != 0, f"helm lint accepted {bad}"
    assert expected in result.stdout + result.stderr


def test_schema_is_strict_at_every_level():
    """Every object with declared properties forbids others (prometheus-community style)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    loose = []

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                if node.get("additionalProperties") is not False:
                    loose.append(path or "/")
            for key, child in node.items():
                walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{path}/{i}")

    walk(schema, "")
    assert not loose, loose


def test_schema_declares_every_default_value():
    """Each key of values.yaml is a property of the schema (so defaults pass, and the
    schema has no gaps that a typo could slip through)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = []

    def walk(value, node, path):
        if not isinstance(value, dict) or "properties" not in node:
            return
        for key, child in value.items():
            if key not in node["properties"]:
                missing.append(f"{path}.{key}")
            else:
                walk(child, node["properties"][key], f"{path}.{key}")

    walk(values, schema, "")
    assert not missing, missing


def test_good_values_still_pass():
    result = lint(
        sets=(
            "replicaCount=3",
            "podDisruptionBudget.maxUnavailable=50%",
            "settings.SERVE_XLA=true",
            "weights.file=models/a.keras",
            "grpc.appProtocol=grpc",
        )
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert render(sets=("settings.SERVE_XLA=true",))
