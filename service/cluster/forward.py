"""``port-forward`` and ``smoke``: reach a ready pod of a release through the API server
(the Python equivalent of ``kubectl port-forward``), one WebSocket per TCP connection."""

from __future__ import annotations

import io
import json
import socket
import threading
import urllib.request
from collections.abc import Callable

from .kube import pod_ready

SERVER_LABELS = "app.kubernetes.io/component=server"


def ready_pods(core, namespace: str, release: str) -> list:
    """The ready server pods of ``release``, by name; LookupError when none is."""
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"app.kubernetes.io/instance={release},{SERVER_LABELS}"
    ).items
    ready = sorted((p for p in pods if pod_ready(p)), key=lambda p: p.metadata.name)
    if not ready:
        raise LookupError(f"no ready pod of release {release} in {namespace} ({len(pods)} found)")
    return ready


def ready_pod(core, namespace: str, release: str):
    """A ready server pod of ``release`` (the first by name); LookupError when none is."""
    return ready_pods(core, namespace, release)[0]


def container_port(pod, name: str = "http", default: int = 8000) -> int:
    for c in pod.spec.containers:
        for p in c.ports or []:
            if p.name == name:
                return p.container_port
    return default


def _pipe(src, dst) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Forwarder:
    """Listens on ``127.0.0.1:local_port`` (0: a free port) and forwards every connection to
    ``pod_name:remote_port`` through the API server, until ``close()``.

    With ``release``, each new connection goes to a ready pod of that release: the same pod
    while it stays ready, another one once it is not (a rollout replaced it, it was evicted),
    so a long debugging session outlives the pod it started on, which ``kubectl port-forward``
    does not. ``say`` hears of each switch and of connections refused for want of a ready pod.
    """

    def __init__(
        self,
        api_client,
        namespace: str,
        pod_name: str,
        remote_port: int,
        local_port=0,
        *,
        release: str | None = None,
        say: Callable[[str], None] | None = None,
    ):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.namespace, self.pod, self.remote = namespace, pod_name, remote_port
        self.release, self.say = release, say or (lambda _text: None)
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", local_port))
        self.port = self.listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="port-forward", daemon=True)

    def __enter__(self) -> Forwarder:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.listener.close()
        except OSError:
            pass

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _target(self) -> str | None:
        """The pod this connection goes to; None when the release has no ready pod."""
        if self.release is None:
            return self.pod
        try:
            names = [p.metadata.name for p in ready_pods(self.core, self.namespace, self.release)]
        except LookupError as exc:
            self.say(f"connection refused: {exc}")
            return None
        with self._lock:
            if self.pod not in names:
                self.say(f"now forwarding to {names[0]}:{self.remote} ({self.pod} is not ready)")
                self.pod = names[0]
            return self.pod

    def _serve(self, conn: socket.socket) -> None:
        from kubernetes.stream import portforward

        try:
            pod = self._target()
        except Exception:
            conn.close()
            raise
        if pod is None:
            conn.close()
            return
        try:
            pf = portforward(
                self.core.connect_get_namespaced_pod_portforward,
                pod,
                self.namespace,
                ports=str(self.remote),
            )
        except Exception:
            conn.close()
            raise
        remote = pf.socket(self.remote)
        remote.setblocking(True)
        back = threading.Thread(target=_pipe, args=(remote, conn), daemon=True)
        back.start()
        _pipe(conn, remote)
        back.join(30)
        pf.close()


def test_image() -> bytes:
    """A built-in 224x224 JPEG (a smooth gradient) for the smoke test."""
    from PIL import Image

    img = Image.linear_gradient("L").resize((224, 224)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def smoke(base_url: str, timeout: float = 60.0) -> dict:
    """Classify the built-in image at ``base_url``; the parsed answer, or ValueError."""
    req = urllib.request.Request(
        base_url.rstrip("/") + "/v1/classify?top_k=3",
        data=test_image(),
        headers={"Content-Type": "image/jpeg"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback forward
        body = json.loads(r.read())
    preds = body.get("predictions")
    if not (isinstance(preds, list) and len(preds) == 1 and len(preds[0]) == 3):
        raise ValueError(f"malformed answer: {body}")
    return body
