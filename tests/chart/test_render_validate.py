"""helm lint --strict and helm template for every shipped values file and a matrix of options;
every rendered object validated offline and strictly against several Kubernetes versions."""

from __future__ import annotations

import itertools

import pytest

from tests.chart.chart_helpers import (
    CI_VALUES,
    CRD_KINDS,
    K8S_VERSIONS,
    PLATFORM_VALUES,
    lint,
    render,
    validation_errors,
)

SHIPPED = [(), *[(v,) for v in PLATFORM_VALUES + CI_VALUES]]

# Option dimensions of the matrix (helm --set strings per value).
DIMENSIONS = {
    "gpu": [("gpu.enabled=true",), ("gpu.enabled=false",)],
    "autoscaling": [
        ("autoscaling.enabled=false",),
        ("autoscaling.enabled=true", "autoscaling.kind=hpa"),
        (
            "autoscaling.enabled=true",
            "autoscaling.kind=hpa",
            "autoscaling.podsMetric.enabled=false",
            "autoscaling.targetCPUUtilizationPercentage=60",
        ),
        ("autoscaling.enabled=true", "autoscaling.kind=keda"),
    ],
    "ingress": [("ingress.enabled=false",), ("ingress.enabled=true", "ingress.className=nginx")],
    "redis": [
        ("redis.mode=disabled",),
        ("redis.mode=internal",),
        ("redis.mode=external", "redis.external.existingSecret=redis-url"),
    ],
    "networkPolicy": [("networkPolicy.enabled=false",), ("networkPolicy.enabled=true",)],
    "weights": [
        ("weights.source=image",),
        ("weights.source=pvc", "weights.pvc.claimName=weights"),
        ("weights.source=url", "weights.url.href=https://example.org/w.h5"),
    ],
    "kernelCache": [
        ("kernelCache.type=emptyDir",),
        ("kernelCache.type=pvc", "kernelCache.pvc.claimName=kernel-cache"),
    ],
    "scrape": [
        ("metrics.podAnnotations=true",),
        ("metrics.podAnnotations=false", "metrics.serviceMonitor.enabled=true"),
    ],
    "grpc": [
        ("grpc.enabled=true",),
        ("grpc.enabled=false",),
        ("grpc.enabled=true", "probes.grpc=true", "grpc.ingress.enabled=true"),
    ],
}


def matrix() -> list[tuple[str, ...]]:
    """Every value of every dimension, each pair of dimensions' values combined at least
    once with the other dimensions rotating (a cheap covering design, not the full product)."""
    names = list(DIMENSIONS)
    combos: set[tuple[int, ...]] = set()
    for a, b in itertools.combinations(range(len(names)), 2):
        for va, vb in itertools.product(
            range(len(DIMENSIONS[names[a]])), range(len(DIMENSIONS[names[b]]))
        ):
            pick = [(va + vb + i) % len(DIMENSIONS[n]) for i, n in enumerate(names)]
            pick[a], pick[b] = va, vb
            combos.add(tuple(pick))
    return [
        tuple(s for i, n in enumerate(names) for s in DIMENSIONS[n][combo[i]])
        for combo in sorted(combos)
    ]


MATRIX = matrix()


def test_matrix_covers_every_pair_of_option_values():
    names = list(DIMENSIONS)
    for a, b in itertools.combinations(names, 2):
        for va, vb in itertools.product(DIMENSIONS[a], DIMENSIONS[b]):
            assert any(set(va) <= set(m) and set(vb) <= set(m) for m in MATRIX), (a, va, b, vb)


@pytest.mark.parametrize("values", SHIPPED, ids=lambda v: v[0] if v else "defaults")
def test_shipped_values_lint_render_and_validate(values):
    result = lint(values)
    assert result.returncode == 0, result.stdout + result.stderr
    check_objects(render(values))


@pytest.mark.parametrize("sets", MATRIX, ids=lambda s: "|".join(x.split("=")[-1] for x in s))
def test_option_matrix_lints_renders_and_validates(sets):
    result = lint(sets=sets)
    assert result.returncode == 0, result.stdout + result.stderr
    objs = render(sets=sets)
    check_objects(objs)
    kinds = {o["kind"] for o in objs}
    assert ("HorizontalPodAutoscaler" in kinds) == ("autoscaling.kind=hpa" in sets)
    assert ("ScaledObject" in kinds) == ("autoscaling.kind=keda" in sets)
    ingresses = {o["metadata"]["name"] for o in objs if o["kind"] == "Ingress"}
    assert ("rel-resnet-serve" in ingresses) == ("ingress.enabled=true" in sets)
    assert ("rel-resnet-serve-grpc" in ingresses) == ("grpc.ingress.enabled=true" in sets)
    assert ("NetworkPolicy" in kinds) == ("networkPolicy.enabled=true" in sets)


def check_objects(objs: list[dict]) -> None:
    assert objs, "nothing rendered"
    errors = []
    for obj in objs:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue
        for version in K8S_VERSIONS:
            errors += validation_errors(obj, version)
    assert not errors, "\n".join(errors)
    names = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"


def test_strict_validation_rejects_unknown_and_mistyped_fields():
    """The validator is really strict: a typo'd field or a wrong type is an error."""
    objs = render()
    deployment = next(o for o in objs if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    deployment["spec"]["replicas"] = "two"
    errors = validation_errors(deployment, K8S_VERSIONS[-1])
    assert any("readinesProbe" in e for e in errors), errors
    assert any("replicas" in e for e in errors), errors


def test_custom_resources_have_the_fields_their_operators_need():
    objs = render(("ci/keda-values.yaml",))
    scaled = next(o for o in objs if o["kind"] == "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "rel-resnet-serve",
    }
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert set(trigger["metadata"]) == {"serverAddress", "query", "threshold"}
    assert 'app_kubernetes_io_instance="rel"' in trigger["metadata"]["query"]
    assert all(isinstance(v, str) for v in trigger["metadata"].values())

    objs = render(("ci/servicemonitor-values.yaml",))
    monitor = next(o for o in objs if o["kind"] == "ServiceMonitor")
    service = next(o for o in objs if o["kind"] == "Service")
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s"}
    ]
    assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
    assert set(monitor["spec"]["podTargetLabels"]) == {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
    }
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
