"""``doctor``: can the cluster run the chart's GPU pods?

Reachability, the nodes that offer the GPU resource (allocatable and free), the NVIDIA device
plugin, and the GPU nodes' taints against the tolerations and node selector of the chosen
values files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .kube import ClusterUnreachable, quantity

HARD_EFFECTS = ("NoSchedule", "NoExecute")


@dataclass
class GpuNode:
    name: str
    allocatable: int
    used: int
    taints: list[dict[str, str]]
    labels: dict[str, str]
    ready: bool

    @property
    def free(self) -> int:
        return max(0, self.allocatable - self.used)


@dataclass
class Report:
    server_version: str = ""
    resource: str = "nvidia.com/gpu"
    nodes: list[GpuNode] = field(default_factory=list)
    plugins: list[dict[str, Any]] = field(default_factory=list)
    values_files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def merge(base: dict, over: dict) -> dict:
    """Helm's merge of values files: maps merge key by key, anything else is replaced, and a
    key set to null is removed (how values.yaml says to drop a default, e.g. a nodeSelector
    entry)."""
    out = dict(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_values(paths: list[str]) -> dict:
    values: dict = {}
    for p in paths:
        values = merge(values, yaml.safe_load(Path(p).read_text()) or {})
    return values


def tolerates(toleration: dict[str, Any], taint: dict[str, str]) -> bool:
    """Kubernetes' rule (``Toleration.ToleratesTaint``)."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    operator = toleration.get("operator") or "Equal"
    if not key:
        return operator == "Exists"  # an empty key with Exists tolerates everything
    if key != taint.get("key"):
        return False
    if operator == "Exists":
        return True
    return str(toleration.get("value") or "") == str(taint.get("value") or "")


def untolerated(taints: list[dict[str, str]], tolerations: list[dict]) -> list[dict[str, str]]:
    return [
        t
        for t in taints
        if t.get("effect") in HARD_EFFECTS and not any(tolerates(tol, t) for tol in tolerations)
    ]


def taint_text(t: dict[str, str]) -> str:
    value = f"={t['value']}" if t.get("value") else ""
    return f"{t['key']}{value}:{t['effect']}"


def gather(api_client, resource: str = "nvidia.com/gpu") -> Report:
    """Ask the API server; raises ClusterUnreachable when it does not answer."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    report = Report(resource=resource)
    try:
        report.server_version = client.VersionApi(api_client).get_code().git_version
    except (ApiException, HTTPError, OSError) as exc:
        raise ClusterUnreachable(f"the API server did not answer: {exc}") from None
    core = client.CoreV1Api(api_client)
    used: dict[str, int] = {}
    # The client's models type every field Optional; the API server fills these.
    pods: Any = core.list_pod_for_all_namespaces(
        field_selector="status.phase!=Succeeded,status.phase!=Failed"
    )
    for pod in pods.items:
        node = pod.spec.node_name
        if not node:
            continue
        for c in pod.spec.containers:
            res = c.resources
            asked = (res.limits or {}).get(resource) or (res.requests or {}).get(resource)
            used[node] = used.get(node, 0) + int(quantity(asked))
    nodes: Any = core.list_node()
    for node in nodes.items:
        allocatable = int(quantity((node.status.allocatable or {}).get(resource)))
        if allocatable <= 0:
            continue
        report.nodes.append(
            GpuNode(
                name=node.metadata.name,
                allocatable=allocatable,
                used=used.get(node.metadata.name, 0),
                taints=[
                    {"key": t.key, "value": t.value or "", "effect": t.effect}
                    for t in (node.spec.taints or [])
                ],
                labels=dict(node.metadata.labels or {}),
                ready=any(
                    c.type == "Ready" and c.status == "True" for c in (node.status.conditions or [])
                ),
            )
        )
    daemonsets: Any = client.AppsV1Api(api_client).list_daemon_set_for_all_namespaces()
    for ds in daemonsets.items:
        name = ds.metadata.name
        if "device-plugin" in name and ("nvidia" in name or "gpu" in name):
            report.plugins.append(
                {
                    "namespace": ds.metadata.namespace,
                    "name": name,
                    "desired": ds.status.desired_number_scheduled or 0,
                    "ready": ds.status.number_ready or 0,
                }
            )
    return report


def judge(report: Report, values: dict | None) -> Report:
    """Fill ``problems`` and ``notes`` from what was gathered and the chosen values."""
    r = report.resource
    if not report.nodes:
        report.problems.append(f"no node offers {r}: no GPU node pool, or no device plugin")
    for n in report.nodes:
        if not n.ready:
            report.problems.append(f"GPU node {n.name} is not Ready")
    if report.nodes and sum(n.free for n in report.nodes if n.ready) == 0:
        report.problems.append(f"every {r} is taken: new GPU pods will stay Pending")
    # A DaemonSet that schedules nothing is normal beside one that runs: GKE ships one per node
    # size and image (only the fitting one runs), the GPU Operator an MPS daemon that runs
    # only with MPS on.
    running = [p for p in report.plugins if p["desired"] > 0]
    if not report.plugins:
        report.problems.append("no NVIDIA device plugin DaemonSet found")
    elif not running:
        names = ", ".join(f"{p['namespace']}/{p['name']}" for p in report.plugins)
        report.problems.append(f"no NVIDIA device plugin runs on any node (0/0: {names})")
    for p in running:
        if p["ready"] < p["desired"]:
            report.problems.append(
                f"device plugin {p['namespace']}/{p['name']}: {p['ready']}/{p['desired']} ready"
            )
    if values is None:
        return report
    gpu = values.get("gpu") or {}
    if gpu.get("enabled", True) is False:
        report.notes.append("the values run CPU pods (gpu.enabled=false): GPU checks are moot")
        return report
    tolerations = values.get("tolerations") or []
    node_selector = values.get("nodeSelector") or {}
    candidates = [
        n for n in report.nodes if all(n.labels.get(k) == v for k, v in node_selector.items())
    ]
    if report.nodes and not candidates:
        report.problems.append(
            "no GPU node matches the values' nodeSelector "
            + ", ".join(f"{k}={v}" for k, v in node_selector.items())
        )
    schedulable = []
    for n in candidates:
        missing = untolerated(n.taints, tolerations)
        if missing:
            report.notes.append(
                f"{n.name}: the values do not tolerate " + ", ".join(taint_text(t) for t in missing)
            )
        else:
            schedulable.append(n)
    if candidates and not schedulable:
        report.problems.append(
            "the values' tolerations tolerate the taints of no GPU node "
            "(add them to `tolerations`, see values-<platform>.yaml)"
        )
    want = int(gpu.get("count", 1) or 1) * int(values.get("replicaCount", 1) or 1)
    free = sum(n.free for n in schedulable if n.ready)
    if schedulable and free < want:
        report.problems.append(
            f"{want} {r} wanted (replicaCount x gpu.count) but {free} free on the nodes "
            "the pods may use"
        )
    return report


def render(report: Report) -> str:
    lines = [f"cluster: reachable, Kubernetes {report.server_version}"]
    if report.nodes:
        lines.append(f"nodes offering {report.resource}:")
        for n in report.nodes:
            taints = ", ".join(taint_text(t) for t in n.taints) or "none"
            state = "" if n.ready else " NOT READY"
            lines.append(
                f"  {n.name}: {n.allocatable} allocatable, {n.free} free{state}; taints: {taints}"
            )
    for p in report.plugins:
        lines.append(
            f"device plugin: {p['namespace']}/{p['name']} {p['ready']}/{p['desired']} ready"
        )
    if report.values_files:
        lines.append("values: " + ", ".join(report.values_files))
    lines += [f"note: {x}" for x in report.notes]
    lines += [f"PROBLEM: {x}" for x in report.problems]
    lines.append(
        "doctor: ok" if not report.problems else f"doctor: {len(report.problems)} problem(s)"
    )
    return "\n".join(lines)
