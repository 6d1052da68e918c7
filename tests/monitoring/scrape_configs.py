"""The two scrape configurations the chart offers, as Prometheus runs them, generated from the
chart's rendered objects: the prometheus-community `prometheus` chart's `kubernetes-pods` job
(role: pod; the pods' `prometheus.io/*` annotations, `metrics.podAnnotations`) and the job the
Prometheus Operator generates for the chart's ServiceMonitor (role: endpoints;
`metrics.serviceMonitor`).

One place for their relabel rules, used three ways:
- `make e2e` (scripts/e2e/prometheus.py) runs them against the real API server: Debian's
  vmagent discovers and scrapes with them (Debian's Prometheus is built without Kubernetes
  discovery) and writes to Debian's Prometheus;
- tests/monitoring/test_real_prometheus.py runs them in a real Prometheus over the discovery
  labels of modelled pods (no API server there), every target pointed at a real server;
- tests/chart/scrape_model.py applies them in its model of relabeling, for the chart tests
  that need no Prometheus.

The rules restate what the Prometheus Operator generates for a ServiceMonitor endpoint and what
the community chart's `kubernetes-pods` job configures; they are not copies of either (the
Operator's sharding and `labelpresent` guards are left out: one Prometheus, plain label values).
"""

from __future__ import annotations

import re

KUBERNETES_PODS = "kubernetes-pods"


def sanitize(name: str) -> str:
    """Prometheus's form of a Kubernetes label name in meta labels and label names."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def from_operator_form(rules: list[dict]) -> list[dict]:
    """A ServiceMonitor's `relabelings` (camelCase) in scrape-config form."""
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return [{keys.get(k, k): v for k, v in r.items()} for r in rules]


# The prometheus-community chart's `kubernetes-pods` job (role: pod, honor_labels: true).
COMMUNITY_PODS_RULES = [
    {
        "action": "keep",
        "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
        "regex": "true",
    },
    {
        "action": "drop",
        "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape_slow"],
        "regex": "true",
    },
    {
        "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scheme"],
        "regex": "(https?)",
        "target_label": "__scheme__",
    },
    {
        "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
        "regex": "(.+)",
        "target_label": "__metrics_path__",
    },
    {
        "source_labels": [
            "__meta_kubernetes_pod_annotation_prometheus_io_port",
            "__meta_kubernetes_pod_ip",
        ],
        "regex": r"(\d+);((([0-9]+?)(\.|$)){4})",
        "replacement": "$2:$1",
        "target_label": "__address__",
    },
    {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
    {
        "action": "drop",
        "source_labels": ["__meta_kubernetes_pod_phase"],
        "regex": "Pending|Succeeded|Failed|Completed",
    },
]


def operator_rules(monitor: dict, endpoint: dict) -> list[dict]:
    """The relabeling the Prometheus Operator generates for one ServiceMonitor endpoint."""
    spec = monitor["spec"]
    rules: list[dict] = [
        {
            "action": "keep",
            "source_labels": [f"__meta_kubernetes_service_label_{sanitize(k)}"],
            "regex": v,
        }
        for k, v in spec["selector"].get("matchLabels", {}).items()
    ]
    rules += [
        {
            "action": "keep",
            "source_labels": ["__meta_kubernetes_endpoint_port_name"],
            "regex": endpoint["port"],
        },
        {
            "source_labels": [
                "__meta_kubernetes_endpoint_address_target_kind",
                "__meta_kubernetes_endpoint_address_target_name",
            ],
            "regex": "Pod;(.*)",
            "target_label": "pod",
        },
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {
            "action": "drop",
            "source_labels": ["__meta_kubernetes_pod_phase"],
            "regex": "(Failed|Succeeded)",
        },
    ]
    rules += [
        {
            "source_labels": [f"__meta_kubernetes_service_label_{sanitize(k)}"],
            "target_label": sanitize(k),
            "regex": "(.+)",
        }
        for k in spec.get("targetLabels", [])
    ]
    rules += [
        {
            "source_labels": [f"__meta_kubernetes_pod_label_{sanitize(k)}"],
            "target_label": sanitize(k),
            "regex": "(.+)",
        }
        for k in spec.get("podTargetLabels", [])
    ]
    rules.append({"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"})
    if spec.get("jobLabel"):
        rules.append(
            {
                "source_labels": [f"__meta_kubernetes_service_label_{sanitize(spec['jobLabel'])}"],
                "target_label": "job",
                "regex": "(.+)",
            }
        )
    rules.append({"target_label": "endpoint", "replacement": endpoint["port"]})
    if endpoint.get("path"):
        rules.append({"target_label": "__metrics_path__", "replacement": endpoint["path"]})
    return rules + from_operator_form(endpoint.get("relabelings", []))


def operator_job_name(monitor: dict, index: int) -> str:
    """The Operator's name for the scrape job of a ServiceMonitor's endpoint number ``index``."""
    meta = monitor["metadata"]
    return f"serviceMonitor/{meta['namespace']}/{meta['name']}/{index}"


def scrape_configs(objs: list[dict], sd: dict | None = None) -> list[dict]:
    """The scrape jobs of a Prometheus that scrapes the release of ``objs`` (its rendered
    objects) both ways: the community chart's `kubernetes-pods` job (part of that Prometheus,
    whatever the release renders) and the Operator's job for each endpoint of each of the
    release's ServiceMonitors, restricted to the monitor's namespace as the Operator restricts
    it (the chart sets no `namespaceSelector`). ``sd`` is added to every
    `kubernetes_sd_configs` entry: the API server, its CA, the credentials."""
    sd = sd or {}
    jobs = [
        {
            "job_name": KUBERNETES_PODS,
            "honor_labels": True,
            "kubernetes_sd_configs": [{"role": "pod", **sd}],
            "relabel_configs": COMMUNITY_PODS_RULES,
        }
    ]
    for monitor in (o for o in objs if o["kind"] == "ServiceMonitor"):
        for i, endpoint in enumerate(monitor["spec"]["endpoints"]):
            job: dict = {
                "job_name": operator_job_name(monitor, i),
                "honor_labels": False,
                "kubernetes_sd_configs": [
                    {
                        "role": "endpoints",
                        "namespaces": {"names": [monitor["metadata"]["namespace"]]},
                        **sd,
                    }
                ],
                "relabel_configs": operator_rules(monitor, endpoint),
            }
            if endpoint.get("interval"):
                job["scrape_interval"] = endpoint["interval"]
            if endpoint.get("path"):
                job["metrics_path"] = endpoint["path"]
            jobs.append(job)
    return jobs
