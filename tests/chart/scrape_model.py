"""A model, for tests, of how Prometheus turns the chart's rendered objects into series, and of
how the series are selected: Kubernetes service discovery's meta labels for one pod, Prometheus
relabeling, the two scrape configurations the chart offers (the Prometheus Operator's for a
ServiceMonitor, the prometheus-community chart's `kubernetes-pods` job for annotated pods), a
small PromQL subset (selectors, `sum`/`max` with `by`), and NetworkPolicy admission.

The scrape jobs and their relabel rules are tests/monitoring/scrape_configs.py's, the ones
a real Prometheus runs in tests/monitoring and in `make e2e`; this model applies them where no
Prometheus runs. What it cannot take from a real one is discovery: the meta labels below are
what Kubernetes discovery gives for a rendered pod template, as if it ran.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from tests.monitoring.scrape_configs import KUBERNETES_PODS, sanitize, scrape_configs

METRIC = "serve_images_in_flight"


# -- relabeling --------------------------------------------------------------------------------


def relabel(labels: dict[str, str], rules: list[dict]) -> dict[str, str] | None:
    """Apply Prometheus relabel rules (keys as in a scrape config); None: the target is dropped."""
    labels = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace").lower()
        regex = re.compile(rule.get("regex", "(.*)"))
        value = rule.get("separator", ";").join(
            labels.get(s, "") for s in rule.get("source_labels", [])
        )
        if action == "keep" and not regex.fullmatch(value):
            return None
        if action == "drop" and regex.fullmatch(value):
            return None
        if action == "replace":
            match = regex.fullmatch(value)
            if match:
                result = match.expand(
                    re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", rule.get("replacement", "$1"))
                )
                target = rule["target_label"]
                if result:
                    labels[target] = result
                else:
                    labels.pop(target, None)
        if action == "labelmap":
            replacement = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", rule.get("replacement", "$1"))
            for name, v in list(labels.items()):
                match = regex.fullmatch(name)
                if match:
                    labels[match.expand(replacement)] = v
        if action == "labeldrop":
            labels = {k: v for k, v in labels.items() if not regex.fullmatch(k)}
        if action == "labelkeep":
            labels = {k: v for k, v in labels.items() if regex.fullmatch(k)}
    return labels


# -- discovery ---------------------------------------------------------------------------------


@dataclass
class Pod:
    """One running pod of a rendered Deployment (or Job) pod template."""

    name: str
    namespace: str
    ip: str
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: dict


def pods_of(objs: list[dict], namespace: str, replicas: int = 2) -> list[Pod]:
    pods: list[Pod] = []
    for o in objs:
        if o["kind"] not in ("Deployment", "Job"):
            continue
        template = o["spec"]["template"]
        for i in range(replicas):
            pods.append(
                Pod(
                    name=f"{o['metadata']['name']}-{i}",
                    namespace=namespace,
                    ip=f"10.1.{len(pods)}.{i + 1}",
                    labels=template["metadata"].get("labels", {}),
                    annotations=template["metadata"].get("annotations", {}),
                    spec=template["spec"],
                )
            )
    return pods


def pod_meta(pod: Pod, container: dict) -> dict[str, str]:
    meta = {
        "__meta_kubernetes_namespace": pod.namespace,
        "__meta_kubernetes_pod_name": pod.name,
        "__meta_kubernetes_pod_ip": pod.ip,
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_container_name": container["name"],
    }
    for k, v in pod.labels.items():
        meta[f"__meta_kubernetes_pod_label_{sanitize(k)}"] = v
    for k, v in pod.annotations.items():
        meta[f"__meta_kubernetes_pod_annotation_{sanitize(k)}"] = v
    return meta


def container_port(pod: Pod, port) -> tuple[dict, int] | None:
    """(container, number) of a pod port given by name or number."""
    for c in pod.spec["containers"]:
        for p in c.get("ports", []):
            if port in (p.get("name"), p["containerPort"]):
                return c, p["containerPort"]
    return None


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


# -- the two scrape configurations -------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    job: str
    address: str
    path: str
    labels: tuple[tuple[str, str], ...]

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def series(self) -> dict[str, str]:
        return {"__name__": METRIC, **dict(self.labels)}


def finish(job: dict, labels: dict[str, str] | None) -> Target | None:
    """The target Prometheus makes of relabeled labels (None: dropped) in a scrape job."""
    if labels is None:
        return None
    labels.setdefault("job", job["job_name"])
    labels.setdefault("instance", labels["__address__"])
    labels.setdefault("__metrics_path__", job.get("metrics_path", "/metrics"))
    kept = tuple(sorted((k, v) for k, v in labels.items() if not k.startswith("__")))
    return Target(job["job_name"], labels["__address__"], labels["__metrics_path__"], kept)


def pod_role(objs: list[dict], namespace: str) -> list[dict[str, str]]:
    """What Kubernetes discovery with `role: pod` gives: one target per container port (one
    for a container without ports)."""
    found = []
    for pod in pods_of(objs, namespace):
        for container in pod.spec["containers"]:
            for port in container.get("ports", []) or [{"containerPort": 80}]:
                found.append(
                    pod_meta(pod, container) | {"__address__": f"{pod.ip}:{port['containerPort']}"}
                )
    return found


def endpoints_role(objs: list[dict], namespace: str) -> list[dict[str, str]]:
    """What `role: endpoints` gives: one target per Service port and pod behind it."""
    found = []
    pods = pods_of(objs, namespace)
    for service in (o for o in objs if o["kind"] == "Service"):
        for pod in (p for p in pods if selects(service["spec"]["selector"], p.labels)):
            for sport in service["spec"]["ports"]:
                port = container_port(pod, sport["targetPort"])
                if port is None:
                    continue
                container, number = port
                meta = pod_meta(pod, container) | {
                    "__address__": f"{pod.ip}:{number}",
                    "__meta_kubernetes_service_name": service["metadata"]["name"],
                    "__meta_kubernetes_endpoint_port_name": sport["name"],
                    "__meta_kubernetes_endpoint_address_target_kind": "Pod",
                    "__meta_kubernetes_endpoint_address_target_name": pod.name,
                }
                for k, v in service["metadata"].get("labels", {}).items():
                    meta[f"__meta_kubernetes_service_label_{sanitize(k)}"] = v
                found.append(meta)
    return found


def discovery(objs: list[dict], namespace: str) -> list[tuple[dict, list[dict[str, str]]]]:
    """Each scrape job of tests/monitoring/scrape_configs.py with the meta labels Kubernetes
    discovery would give it for the pods of ``objs`` running in ``namespace``."""
    roles = {"pod": pod_role, "endpoints": endpoints_role}
    return [
        (job, roles[job["kubernetes_sd_configs"][0]["role"]](objs, namespace))
        for job in scrape_configs(objs)
    ]


def scrape_targets(objs: list[dict], namespace: str) -> dict[str, list[Target]]:
    """The targets of each scrape job, by job name, after its relabeling. Targets that
    relabel to the same labels are one scrape (several container ports of one pod to the
    annotated port)."""
    out: dict[str, list[Target]] = {}
    for job, metas in discovery(objs, namespace):
        found = (finish(job, relabel(m, job["relabel_configs"])) for m in metas)
        unique = {(t.address, t.path, t.labels): t for t in found if t is not None}
        out[job["job_name"]] = list(unique.values())
    return out


def annotation_targets(objs: list[dict], namespace: str) -> list[Target]:
    """What the community Prometheus's `kubernetes-pods` job scrapes of the release."""
    return scrape_targets(objs, namespace)[KUBERNETES_PODS]


def service_monitor_targets(objs: list[dict], namespace: str) -> list[Target]:
    """What a Prometheus Operator's Prometheus scrapes for the release's ServiceMonitors."""
    return [
        t
        for job, found in scrape_targets(objs, namespace).items()
        if job != KUBERNETES_PODS
        for t in found
    ]


# -- a PromQL subset ---------------------------------------------------------------------------

MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')


def parse_matchers(text: str) -> list[tuple[str, str, str]]:
    out, pos = [], 0
    while pos < len(text.strip()):
        m = MATCHER.match(text, pos)
        assert m, f"cannot parse matchers {text!r} at {pos}"
        out.append((m.group(1), m.group(2), m.group(3).replace('\\"', '"')))
        pos = m.end()
    return out


def matches(series: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    for name, op, value in matchers:
        got = series.get(name, "")
        ok = {
            "=": got == value,
            "!=": got != value,
            "=~": re.fullmatch(value, got) is not None,
            "!~": re.fullmatch(value, got) is None,
        }[op]
        if not ok:
            return False
    return True


def selector_matchers(expr: str) -> list[list[tuple[str, str, str]]]:
    """The matchers of every selector of the metric in an expression (its name included)."""
    return [
        [("__name__", "=", METRIC), *parse_matchers(m.group(1) or "")]
        for m in re.finditer(rf"\b{METRIC}\s*(?:\{{([^}}]*)\}})?", expr)
    ]


def _closing(text: str, start: int) -> int:
    """Index of the parenthesis that closes the one at `start`."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise AssertionError(f"unbalanced parentheses in {text!r}")


def _by(text: str) -> tuple[list[str], str]:
    """(labels of a leading `by (...)`, the rest)."""
    m = re.match(r"by\s*\(([^)]*)\)\s*", text)
    if not m:
        return [], text
    return [b.strip() for b in m.group(1).split(",") if b.strip()], text[m.end() :]


def evaluate(expr: str, samples: list[tuple[dict[str, str], float]]) -> dict[tuple, float]:
    """Evaluate `metric{...}` and `sum|max [by (l, ...)] (expr) [by (l, ...)]` over samples:
    {sorted label pairs: value}."""
    expr = expr.strip()
    agg = re.match(r"(sum|max)\s*", expr)
    if agg:
        by, rest = _by(expr[agg.end() :])
        assert rest.startswith("("), f"not in the PromQL subset: {expr}"
        end = _closing(rest, 0)
        inner, tail = rest[1:end], rest[end + 1 :].strip()
        if tail:
            by, tail = _by(tail)
            assert not tail, f"not in the PromQL subset: {expr}"
        groups: dict[tuple, list[float]] = {}
        for labels, value in evaluate(inner, samples).items():
            key = tuple((k, v) for k, v in labels if k in by)
            groups.setdefault(key, []).append(value)
        return {k: (sum(v) if agg.group(1) == "sum" else max(v)) for k, v in groups.items()}
    assert re.fullmatch(rf"{METRIC}\s*(\{{[^}}]*\}})?", expr), f"not in the PromQL subset: {expr}"
    (matchers,) = selector_matchers(expr)
    return {tuple(sorted(s.items())): v for s, v in samples if matches(s, matchers)}


# -- NetworkPolicy -----------------------------------------------------------------------------


def peer_admits(
    peer: dict, policy_ns: str, ns: str, ns_labels: dict, labels: dict, ip: str
) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        addr = ipaddress.ip_address(ip)
        return addr in ipaddress.ip_network(block["cidr"]) and not any(
            addr in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    ns_sel = peer.get("namespaceSelector")
    pod_sel = peer.get("podSelector")
    ns_ok = policy_ns == ns if ns_sel is None else selects(ns_sel.get("matchLabels", {}), ns_labels)
    pod_ok = pod_sel is None or selects(pod_sel.get("matchLabels", {}), labels)
    return ns_ok and pod_ok


def port_admits(rule: dict, pod: Pod | None, number: int, protocol: str = "TCP") -> bool:
    if "ports" not in rule:
        return True
    for p in rule["ports"]:
        if p.get("protocol", "TCP") != protocol:
            continue
        port = p.get("port")
        if port is None or port == number:
            return True
        if pod is not None and isinstance(port, str):
            found = container_port(pod, port)
            if found and found[1] == number:
                return True
    return False


def ingress_allowed(policies: list[dict], pod: Pod, port: int, peer: dict) -> bool:
    """May `peer` (namespace, ns_labels, labels, ip) reach `pod` on `port`? Pods no policy
    selects accept anything; otherwise one rule of one selecting policy must admit it."""
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and selects(p["spec"]["podSelector"].get("matchLabels", {}), pod.labels)
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            if not port_admits(rule, pod, port):
                continue
            if "from" not in rule or any(
                peer_admits(
                    f,
                    policy["metadata"]["namespace"],
                    peer["namespace"],
                    peer["ns_labels"],
                    peer["labels"],
                    peer["ip"],
                )
                for f in rule["from"]
            ):
                return True
    return False


def egress_allowed(
    policies: list[dict], pod: Pod, ip: str, port: int, protocol: str = "TCP"
) -> bool:
    """May `pod` open a connection to an address outside the cluster?"""
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and selects(p["spec"]["podSelector"].get("matchLabels", {}), pod.labels)
        and "Egress" in p["spec"].get("policyTypes", [])
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("egress", []):
            if not port_admits(rule, None, port, protocol):
                continue
            if "to" not in rule or any(
                "ipBlock" in t and peer_admits(t, "", "", {}, {}, ip) for t in rule["to"]
            ):
                return True
    return False
