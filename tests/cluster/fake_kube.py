"""A stand-in Kubernetes API server on loopback: the few REST endpoints the cluster CLI uses,
answering with recorded-style JSON (as `kubectl get -o json` shows them), plus the pod
port-forward WebSocket (v4.channel.k8s.io) relaying to a local TCP port.

The real `kubernetes` client talks to it over HTTP through a temporary kubeconfig.
"""

from __future__ import annotations

import asyncio
import copy
import socket
import threading
import time
from pathlib import Path
from urllib.parse import unquote

import uvicorn
import yaml
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse

TS = "2026-11-20T10:00:00Z"


def node(name: str, gpus: int, labels: dict, taints: list[dict], ready: bool = True) -> dict:
    allocatable = {"cpu": "15890m", "memory": "60055060Ki", "pods": "110"}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        # The labels every kubelet sets on its node, then the test's own.
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/arch": "amd64", **labels},
        },
        "spec": {"taints": taints} if taints else {},
        "status": {
            "allocatable": allocatable,
            "capacity": allocatable,
            "conditions": [
                {"type": "Ready", "status": "True" if ready else "False", "reason": "KubeletReady"}
            ],
        },
    }


def pod(
    name: str,
    namespace: str,
    node_name: str | None,
    labels: dict,
    gpus: int = 0,
    ready: bool = True,
    phase: str = "Running",
    waiting: tuple[str, str] | None = None,
) -> dict:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    status: dict = {
        "phase": phase,
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                **({} if ready else {"reason": "ContainersNotReady", "message": "not ready"}),
            }
        ],
    }
    if waiting:
        status["containerStatuses"] = [
            {
                "name": "server",
                "ready": False,
                "restartCount": 3,
                "image": "resnet-serve:0.1.0",
                "imageID": "",
                "state": {"waiting": {"reason": waiting[0], "message": waiting[1]}},
            }
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            **({"nodeName": node_name} if node_name else {}),
            "containers": [
                {
                    "name": "server",
                    "image": "resnet-serve:0.1.0",
                    "ports": [{"name": "http", "containerPort": 8000}],
                    "resources": resources,
                }
            ],
        },
        "status": status,
    }


def daemonset(name: str, namespace: str, desired: int, ready: int) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"name": name}},
            "template": {"metadata": {"labels": {"name": name}}, "spec": {"containers": []}},
        },
        "status": {
            "currentNumberScheduled": desired,
            "desiredNumberScheduled": desired,
            "numberMisscheduled": 0,
            "numberReady": ready,
        },
    }


def deployment(name, namespace, release, replicas, updated, available, generation=2, failed=""):
    labels = {"app.kubernetes.io/instance": release, "app.kubernetes.io/component": "server"}
    conditions = []
    if failed:
        conditions.append(
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": failed,
            }
        )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "generation": generation,
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": []}},
        },
        "status": {
            "observedGeneration": generation,
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": available,
            "availableReplicas": available,
            "conditions": conditions,
        },
    }


def event(namespace: str, pod_name: str, reason: str, message: str, kind: str = "Warning") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{pod_name}.{reason.lower()}", "namespace": namespace},
        "involvedObject": {"kind": "Pod", "name": pod_name, "namespace": namespace},
        "reason": reason,
        "message": message,
        "type": kind,
        "lastTimestamp": TS,
    }


def _matches(labels: dict, sel: str | None) -> bool:
    if not sel:
        return True
    for term in sel.split(","):
        k, v = term.split("=", 1)
        if labels.get(k) != v:
            return False
    return True


def _fields(obj: dict, sel: str | None) -> bool:
    if not sel:
        return True
    for term in sel.split(","):
        negate = "!=" in term
        k, v = term.split("!=" if negate else "=", 1)
        cur: object = obj
        for part in k.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if (str(cur) == v) == negate:
            return False
    return True


class FakeKube:
    """State the tests set: nodes, pods, daemonsets, deployments (a list of states served in
    turn, the last one repeated), events; and where port-forwards go."""

    def __init__(self):
        self.nodes: list[dict] = []
        self.pods: list[dict] = []
        self.daemonsets: list[dict] = []
        self.deployment_states: list[list[dict]] = [[]]
        self.events: list[dict] = []
        self.forward_to: tuple[str, int] | None = None
        self.requests: list[str] = []
        self.app = self._app()

    def _list(self, kind: str, items: list[dict]) -> dict:
        return {"apiVersion": "v1", "kind": f"{kind}List", "metadata": {}, "items": items}

    def _app(self) -> FastAPI:
        app = FastAPI()
        fk = self

        @app.middleware("http")
        async def record(request: Request, call_next):
            fk.requests.append(unquote(f"{request.url.path}?{request.url.query}"))
            return await call_next(request)

        @app.get("/version")
        def version():
            return {
                "major": "1",
                "minor": "33",
                "emulationMajor": "1",
                "emulationMinor": "33",
                "minCompatibilityMajor": "1",
                "minCompatibilityMinor": "32",
                "gitVersion": "v1.33.4",
                "gitCommit": "74cdb426e5b7d3e4a6a7b5b2f3b1d6c0f5e1a2b3",
                "gitTreeState": "clean",
                "buildDate": "2025-08-12T18:49:17Z",
                "goVersion": "go1.24.5",
                "compiler": "gc",
                "platform": "linux/amd64",
            }

        @app.get("/api/v1/nodes")
        def nodes():
            return fk._list("Node", copy.deepcopy(fk.nodes))

        def pods_in(ns, label_sel, field_sel):
            return [
                p
                for p in fk.pods
                if (ns is None or p["metadata"]["namespace"] == ns)
                and _matches(p["metadata"].get("labels", {}), label_sel)
                and _fields(p, field_sel)
            ]

        @app.get("/api/v1/pods")
        def all_pods(labelSelector: str | None = None, fieldSelector: str | None = None):  # noqa: N803
            return fk._list("Pod", pods_in(None, labelSelector, fieldSelector))

        @app.get("/api/v1/namespaces/{ns}/pods")
        def ns_pods(ns: str, labelSelector: str | None = None, fieldSelector: str | None = None):  # noqa: N803
            return fk._list("Pod", pods_in(ns, labelSelector, fieldSelector))

        @app.get("/apis/apps/v1/daemonsets")
        def daemonsets():
            return fk._list("DaemonSet", fk.daemonsets)

        @app.get("/apis/apps/v1/namespaces/{ns}/deployments")
        def deployments(ns: str, labelSelector: str | None = None):  # noqa: N803
            states = fk.deployment_states
            current = states.pop(0) if len(states) > 1 else states[0]
            items = [
                d
                for d in current
                if d["metadata"]["namespace"] == ns
                and _matches(d["metadata"]["labels"], labelSelector)
            ]
            return fk._list("Deployment", items)

        @app.get("/api/v1/namespaces/{ns}/events")
        def events(ns: str, fieldSelector: str | None = None):  # noqa: N803
            items = [e for e in fk.events if e["metadata"]["namespace"] == ns]
            return fk._list("Event", [e for e in items if _fields(e, fieldSelector)])

        @app.websocket("/api/v1/namespaces/{ns}/pods/{name}/portforward")
        async def portforward(ws: WebSocket, ns: str, name: str):
            fk.requests.append(unquote(f"{ws.url.path}?{ws.url.query}"))
            port = int(ws.query_params["ports"])
            await ws.accept(subprotocol="v4.channel.k8s.io")
            header = bytes((port % 256, port // 256))
            await ws.send_bytes(b"\x00" + header)
            await ws.send_bytes(b"\x01" + header)
            assert fk.forward_to is not None
            reader, writer = await asyncio.open_connection(*fk.forward_to)

            async def upstream():
                while True:
                    msg = await ws.receive()
                    if msg["type"] == "websocket.disconnect":
                        break
                    data = msg.get("bytes") or b""
                    if data[:1] == b"\x00":
                        writer.write(data[1:])
                        await writer.drain()
                writer.close()

            async def downstream():
                while data := await reader.read(65536):
                    await ws.send_bytes(b"\x00" + data)
                await ws.close()

            tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in tasks:
                t.cancel()

        @app.exception_handler(404)
        async def not_found(request, exc):
            return JSONResponse(
                {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404},
                status_code=404,
            )

        return app


class Served:
    """Run a FakeKube with uvicorn on a free loopback port, and a kubeconfig pointing at it."""

    def __init__(self, fake: FakeKube, tmp: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(fake.app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.kubeconfig = tmp / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig(f"http://127.0.0.1:{self.port}")))

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "fake API server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def kubeconfig(server: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "fake-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
        "current-context": "fake",
    }
