"""``wait``: follow a release's Deployments until they are rolled out, and say why not."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .kube import pod_ready, selector


@dataclass
class DeploymentState:
    name: str
    wanted: int
    updated: int
    ready: int
    available: int
    current: bool  # the controller has seen the latest spec
    failed: str = ""  # ProgressDeadlineExceeded message, if any
    total: int = -1  # pods of every revision (status.replicas); -1: as many as wanted

    @property
    def done(self) -> bool:
        """``kubectl rollout status``'s rule: every pod updated, no pod of an older revision
        left, and the updated ones available. ``available`` alone counts old pods too: with
        the chart's surge (maxUnavailable 0) they stay available while a new pod crash-loops."""
        total = self.wanted if self.total < 0 else self.total
        return (
            self.current
            and not self.failed
            and self.updated == self.wanted
            and total == self.updated
            and self.available >= self.updated
        )

    def text(self) -> str:
        return (
            f"deployment/{self.name}: {self.updated}/{self.wanted} updated, "
            f"{self.ready} ready, {self.available} available"
        )


@dataclass
class PodProblem:
    name: str
    phase: str
    reasons: list[str]
    events: list[str] = field(default_factory=list)


def deployments(apps, namespace: str, release: str) -> list:
    return apps.list_namespaced_deployment(
        namespace, label_selector=f"app.kubernetes.io/instance={release}"
    ).items


def state_of(d) -> DeploymentState:
    st = d.status
    current = (st.observed_generation or 0) >= (d.metadata.generation or 0)
    failed = ""
    # A condition of an older generation says nothing of this rollout (kubectl's rule too).
    for c in st.conditions or [] if current else []:
        if c.type == "Progressing" and c.reason == "ProgressDeadlineExceeded":
            failed = c.message or c.reason
    return DeploymentState(
        name=d.metadata.name,
        wanted=d.spec.replicas if d.spec.replicas is not None else 1,
        updated=st.updated_replicas or 0,
        ready=st.ready_replicas or 0,
        available=st.available_replicas or 0,
        current=current,
        failed=failed,
        total=st.replicas or 0,
    )


def pod_problems(core, namespace: str, labels: dict[str, str], events: int = 5) -> list[PodProblem]:
    """Pods of ``labels`` that are not ready: container states and their latest events."""
    out = []
    for pod in core.list_namespaced_pod(namespace, label_selector=selector(labels)).items:
        if pod_ready(pod):
            continue
        reasons = []
        for c in pod.status.conditions or []:
            if c.status != "True" and c.reason:
                reasons.append(f"{c.type}: {c.reason} {c.message or ''}".strip())
        for cs in (pod.status.init_container_statuses or []) + (
            pod.status.container_statuses or []
        ):
            if cs.state and cs.state.waiting:
                w = cs.state.waiting
                reasons.append(f"{cs.name}: {w.reason} {w.message or ''}".strip())
            elif cs.state and cs.state.terminated and cs.state.terminated.exit_code:
                t = cs.state.terminated
                reasons.append(f"{cs.name}: exited {t.exit_code} ({t.reason})")
            if cs.restart_count:
                reasons.append(f"{cs.name}: {cs.restart_count} restart(s)")
        evs = core.list_namespaced_event(
            namespace,
            field_selector=f"involvedObject.kind=Pod,involvedObject.name={pod.metadata.name}",
        ).items
        evs.sort(key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp)
        out.append(
            PodProblem(
                pod.metadata.name,
                pod.status.phase or "Unknown",
                reasons,
                [f"{e.type} {e.reason}: {e.message}" for e in evs[-events:]],
            )
        )
    return out


def wait(
    api_client, namespace: str, release: str, timeout: float, interval: float = 2.0, log=print
) -> bool:
    """True once every Deployment of ``release`` is rolled out; False at ``timeout`` or when a
    rollout passes its progress deadline, after reporting the pods that are not ready."""
    from kubernetes import client

    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        deps = deployments(apps, namespace, release)
        states = [state_of(d) for d in deps]
        text = "; ".join(s.text() for s in states)
        if text != last:
            log(text or f"no Deployment with app.kubernetes.io/instance={release} in {namespace}")
            last = text
        if states and all(s.done for s in states):
            log(f"release {release}: rolled out")
            return True
        failed = [s for s in states if s.failed]
        if failed or time.monotonic() >= deadline:
            for s in failed:
                log(f"deployment/{s.name} failed: {s.failed}")
            if not failed:
                log(f"release {release}: not rolled out after {timeout:g} s")
            for d in deps:
                for p in pod_problems(core, namespace, d.spec.selector.match_labels or {}):
                    log(f"pod {p.name} ({p.phase}) not ready:")
                    for r in p.reasons:
                        log(f"  {r}")
                    for e in p.events:
                        log(f"  event: {e}")
            return False
        time.sleep(interval)
