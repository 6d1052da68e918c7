"""Autoscaling end to end, offline: from the rendered objects, the series that the shipped scrape
configurations make of the server's gauge (pod annotations for the community Prometheus, the
ServiceMonitor for the Prometheus Operator's), then every shipped KEDA query and prometheus-adapter
rule evaluated over them, next to the series of other releases; and the network policy that
must let Prometheus, the `helm test` pod, an in-cluster Locust and job callbacks through.
The model of Prometheus and of NetworkPolicy is tests/chart/scrape_model.py; the scrape jobs it
applies are tests/monitoring/scrape_configs.py's, which a real Prometheus runs in
tests/monitoring and `make e2e`."""

from __future__ import annotations

import pytest
import yaml

from tests.chart.chart_helpers import (
    CHART,
    CI_VALUES,
    LOCUST_CHART,
    PLATFORM_VALUES,
    render,
    server_container,
)
from tests.chart.scrape_model import (
    Pod,
    annotation_targets,
    egress_allowed,
    evaluate,
    ingress_allowed,
    matches,
    parse_matchers,
    pods_of,
    selector_matchers,
    service_monitor_targets,
)

ADAPTER = CHART / "monitoring" / "prometheus-adapter-values.yaml"
SCRAPERS = {"annotations": annotation_targets, "serviceMonitor": service_monitor_targets}
GAUGE = 10.0  # each server pod's serve_images_in_flight in the evaluations below


def autoscaler(values, sets) -> str | None:
    """`keda`, `hpa` (on a Pods metric, from the adapter) or None (no Prometheus metric)."""
    objs = render(values, sets)
    if any(o["kind"] == "ScaledObject" for o in objs):
        return "keda"
    hpa_pods = any(
        m["type"] == "Pods"
        for o in objs
        if o["kind"] == "HorizontalPodAutoscaler"
        for m in o["spec"]["metrics"]
    )
    return "hpa" if hpa_pods else None


KEDA_DEFAULTS = ("autoscaling.enabled=true", "autoscaling.kind=keda")
HPA_DEFAULTS = ("autoscaling.enabled=true", "autoscaling.kind=hpa")
CANDIDATES = [((), KEDA_DEFAULTS), ((), HPA_DEFAULTS)] + [
    ((v,), ()) for v in PLATFORM_VALUES + CI_VALUES
]
AUTOSCALED = [c for c in CANDIDATES if autoscaler(*c)]
KEDA = [c for c in AUTOSCALED if autoscaler(*c) == "keda"]
HPA = [c for c in AUTOSCALED if autoscaler(*c) == "hpa"]
IDS = lambda c: (c[0][0] if c[0] else "defaults") + ("+" + c[1][1] if c[1] else "")  # noqa: E731


def server_pods(objs: list[dict], namespace: str = "serving") -> list[Pod]:
    return [
        p
        for p in pods_of(objs, namespace)
        if p.labels.get("app.kubernetes.io/component") == "server"
    ]


def scrapes(values, sets, release="rel", namespace="serving"):
    """{scrape configuration: targets} for the configurations the values switch on."""
    objs = render(values, sets, release, namespace)
    found = {name: f(objs, namespace) for name, f in SCRAPERS.items()}
    return {name: t for name, t in found.items() if t}


def samples(targets, value=GAUGE):
    return [(t.series(), value) for t in targets]


def neighbours(values, sets):
    """Series of other releases a query must not count: another release in the namespace,
    and a release of the same name in another namespace."""
    out = []
    for release, namespace in (("other", "serving"), ("rel", "staging")):
        for targets in scrapes(values, sets, release, namespace).values():
            out += samples(targets, 1000.0)
    return out


def test_the_scenarios_cover_keda_and_the_hpa_on_both_scrape_configurations():
    kinds = {
        (o["kind"], name)
        for values, sets in AUTOSCALED
        for o in render(values, sets)
        if o["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")
        for name in scrapes(values, sets)
    }
    assert kinds >= {
        ("ScaledObject", "annotations"),
        ("ScaledObject", "serviceMonitor"),
        ("HorizontalPodAutoscaler", "annotations"),
        ("HorizontalPodAutoscaler", "serviceMonitor"),
    }


@pytest.mark.parametrize("values, sets", AUTOSCALED, ids=[IDS(c) for c in AUTOSCALED])
def test_every_server_pod_is_scraped_once_on_the_port_that_serves_metrics(values, sets):
    objs = render(values, sets)
    found = scrapes(values, sets)
    assert found, "autoscaling on a Prometheus metric, but no scrape configuration is on"
    port = int(next(e["value"] for e in server_container(objs)["env"] if e["name"] == "SERVE_PORT"))
    pods = {p.name for p in server_pods(objs)}
    for name, targets in found.items():
        assert sorted(dict(t.labels)["pod"] for t in targets) == sorted(pods), name
        assert {(t.port, t.path) for t in targets} == {(port, "/metrics")}, name
        for t in targets:
            labels = dict(t.labels)
            assert labels["namespace"] == "serving", (name, labels)


@pytest.mark.parametrize("values, sets", KEDA, ids=[IDS(c) for c in KEDA])
def test_the_keda_query_counts_this_releases_pods_once_each(values, sets):
    objs = render(values, sets)
    (scaled,) = [o for o in objs if o["kind"] == "ScaledObject"]
    (trigger,) = scaled["spec"]["triggers"]
    query = trigger["metadata"]["query"]
    found = scrapes(values, sets)
    pods = len(server_pods(objs))
    others = neighbours(values, sets)
    # Each scrape configuration alone, and both at once (a Prometheus that runs both jobs).
    for name, targets in [*found.items(), ("all", [t for ts in found.values() for t in ts])]:
        result = evaluate(query, samples(targets) + others)
        assert list(result.values()) == [GAUGE * pods], (name, query, result)
        for selector in selector_matchers(query):
            assert all(matches(t.series(), selector) for t in targets), (name, selector)


def adapter_rule(metric: str) -> dict:
    rules = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    (rule,) = [r for r in rules if r["name"]["as"] == metric]
    return rule


@pytest.mark.parametrize("values, sets", HPA, ids=[IDS(c) for c in HPA])
def test_the_adapter_rule_serves_the_hpa_metric_of_each_pod(values, sets):
    objs = render(values, sets)
    (hpa,) = [o for o in objs if o["kind"] == "HorizontalPodAutoscaler"]
    (metric,) = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    rule = adapter_rule(metric)
    overrides = rule["resources"]["overrides"]
    assert {k: v["resource"] for k, v in overrides.items()} == {
        "namespace": "namespace",
        "pod": "pod",
    }
    found = scrapes(values, sets)
    pods = sorted(p.name for p in server_pods(objs))
    for name, targets in [*found.items(), ("all", [t for ts in found.values() for t in ts])]:
        series = [t.series() for t in targets]
        (selector,) = selector_matchers(rule["seriesQuery"])
        assert series and all(matches(s, selector) for s in series), (name, rule["seriesQuery"])
        assert all(set(overrides) <= set(s) for s in series), name
        # What the adapter asks Prometheus for the HPA: the pods of the target, grouped by pod.
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", metric)
            .replace("<<.LabelMatchers>>", f'namespace="serving",pod=~"{"|".join(pods)}"')
            .replace("<<.GroupBy>>", "pod")
        )
        result = evaluate(query, samples(targets) + neighbours(values, sets))
        assert result == {(("pod", p),): GAUGE for p in pods}, (name, query, result)


def test_the_adapter_file_matches_the_hpas_default_metric():
    default = yaml.safe_load((CHART / "values.yaml").read_text())["autoscaling"]["podsMetric"]
    rule = adapter_rule(default["name"])
    assert parse_matchers('namespace!="",pod!=""') == parse_matchers(
        rule["seriesQuery"].split("{", 1)[1].rstrip("}")
    )


# -- network policy ----------------------------------------------------------------------------

PROMETHEUS = {
    "namespace": "monitoring",
    "ns_labels": {"kubernetes.io/metadata.name": "monitoring"},
    "labels": {"app.kubernetes.io/name": "prometheus"},
    "ip": "10.9.0.1",
}
STRANGER = {
    "namespace": "default",
    "ns_labels": {"kubernetes.io/metadata.name": "default"},
    "labels": {"app": "curl"},
    "ip": "10.9.0.2",
}
# The ServiceMonitor's Prometheus through a closed policy too.
CLOSED = ("networkPolicy.enabled=true", "networkPolicy.ingressFrom[0].podSelector.matchLabels.a=b")
NETPOL = [
    c
    for c in [((v,), ()) for v in CI_VALUES] + [(("ci/keda-values.yaml",), CLOSED)]
    if any(o["kind"] == "NetworkPolicy" for o in render(*c))
]


def policies(objs):
    return [o for o in objs if o["kind"] == "NetworkPolicy"]


def peer_of(pod: Pod) -> dict:
    return {
        "namespace": pod.namespace,
        "ns_labels": {"kubernetes.io/metadata.name": pod.namespace},
        "labels": pod.labels,
        "ip": pod.ip,
    }


@pytest.mark.parametrize("values, sets", NETPOL, ids=[IDS(c) for c in NETPOL])
def test_prometheus_and_the_test_pod_get_through_and_strangers_do_not(values, sets):
    objs = render(values, sets)
    pols = policies(objs)
    server = server_pods(objs)[0]
    port = int(next(e["value"] for e in server_container(objs)["env"] if e["name"] == "SERVE_PORT"))
    for targets in scrapes(values, sets).values():
        for t in {t.port for t in targets}:
            assert ingress_allowed(pols, server, t, PROMETHEUS), (values, t)
    test_pod = next(o for o in objs if o["kind"] == "Pod")
    tester = Pod(
        "test", "serving", "10.9.0.3", test_pod["metadata"]["labels"], {}, test_pod["spec"]
    )
    assert ingress_allowed(pols, server, port, peer_of(tester))
    (server_policy,) = [
        p for p in pols if p["metadata"]["labels"]["app.kubernetes.io/component"] == "server"
    ]
    restricted = all("from" in r for r in server_policy["spec"]["ingress"])
    assert ingress_allowed(pols, server, port, STRANGER) is not restricted


def locust_workers(release: str, namespace: str) -> list[Pod]:
    objs = render((), (), release, namespace, LOCUST_CHART)
    return [
        p for p in pods_of(objs, namespace) if p.labels["app.kubernetes.io/component"] == "worker"
    ]


def test_an_in_cluster_locust_gets_through_when_configured():
    values = ("ci/jobs-callbacks-netpol-values.yaml",)
    objs = render(values)
    server = server_pods(objs)[0]
    port = int(next(e["value"] for e in server_container(objs)["env"] if e["name"] == "SERVE_PORT"))
    (worker, *_) = locust_workers("lt", "loadtest")
    assert ingress_allowed(policies(objs), server, port, peer_of(worker))
    (stranger, *_) = locust_workers("other", "loadtest")
    assert not ingress_allowed(policies(objs), server, port, peer_of(stranger))
    closed = render(values, ("networkPolicy.locust.enabled=false",))
    assert not ingress_allowed(policies(closed), server, port, peer_of(worker))


def test_job_callbacks_get_out_only_when_callbacks_are_allowed():
    callbacks = render(("ci/jobs-callbacks-netpol-values.yaml",))
    server = server_pods(callbacks)[0]
    assert egress_allowed(policies(callbacks), server, "203.0.113.10", 443)
    closed = render(("ci/redis-internal-netpol-values.yaml",))
    assert not egress_allowed(policies(closed), server_pods(closed)[0], "203.0.113.10", 443)
