"""python -m service.cluster doctor|wait|port-forward|smoke (docs/DEPLOY.md, docs/LOADTEST.md).

Exit codes: 0 fine, 1 a problem was found, 2 the cluster cannot be reached.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from .kube import ClusterUnreachable, api_client


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m service.cluster", description=__doc__)
    ap.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    ap.add_argument("--context", help="kubeconfig context")
    ap.add_argument("-n", "--namespace", default="default")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("doctor", help="GPU nodes, device plugin, taints vs the values' tolerations")
    p.add_argument("-f", "--values", action="append", default=[], help="chart values file(s)")
    p.add_argument(
        "--chart",
        default="charts/resnet-serve",
        help="chart whose values.yaml holds the defaults under the -f files (if it exists)",
    )
    p.add_argument("--resource", default="", help="GPU resource (default: the values' or nvidia)")
    p = sub.add_parser("wait", help="wait for a release's rollout; report pods not ready")
    p.add_argument("release")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--interval", type=float, default=2.0)
    for name, text in (
        ("port-forward", "forward a local port to a ready pod of the release"),
        ("smoke", "classify a built-in image through a forward to the release"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("release")
        p.add_argument("--local-port", type=int, default=8000 if name == "port-forward" else 0)
        p.add_argument("--remote-port", type=int, help="default: the pod's port named http")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        api = api_client(a.kubeconfig, a.context)
        if a.command == "doctor":
            from . import doctor

            defaults = Path(a.chart) / "values.yaml"
            files = ([str(defaults)] if a.values and defaults.is_file() else []) + a.values
            values = doctor.load_values(files) if a.values else None
            resource = a.resource or ((values or {}).get("gpu") or {}).get(
                "resourceName", "nvidia.com/gpu"
            )
            report = doctor.gather(api, resource)
            report.values_files = a.values
            doctor.judge(report, values)
            say(doctor.render(report))
            return 1 if report.problems else 0
        if a.command == "wait":
            from .rollout import wait

            return 0 if wait(api, a.namespace, a.release, a.timeout, a.interval, say) else 1
        from kubernetes import client

        from . import forward

        try:
            pod = forward.ready_pod(client.CoreV1Api(api), a.namespace, a.release)
        except LookupError as exc:
            say(str(exc))
            return 1
        remote = a.remote_port or forward.container_port(pod)
        with forward.Forwarder(
            api,
            a.namespace,
            pod.metadata.name,
            remote,
            a.local_port,
            release=a.release if a.command == "port-forward" else None,
            say=say,
        ) as fw:
            url = f"http://127.0.0.1:{fw.port}"
            if a.command == "smoke":
                try:
                    body = forward.smoke(url)
                except (OSError, ValueError) as exc:
                    say(f"smoke: FAILED through pod {pod.metadata.name}: {exc}")
                    return 1
                top = body["predictions"][0][0]
                say(
                    f"smoke: ok through pod {pod.metadata.name}: model {body.get('model')}, "
                    f"top class {top['label']!r} ({top['score']:.3f})"
                )
                return 0
            say(f"forwarding {url} -> {pod.metadata.name}:{remote} (Ctrl-C to stop)")
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                return 0
    except ClusterUnreachable as exc:
        say(f"cluster: NOT reachable: {exc}")
        return 2
    except Exception as exc:  # the client's errors: urllib3 (no answer) and ApiException
        from kubernetes.client.rest import ApiException

        if isinstance(exc, ApiException):
            say(f"cluster: the API server refused: {exc.status} {exc.reason}")
            return 1
        from urllib3.exceptions import HTTPError

        if isinstance(exc, HTTPError):
            say(f"cluster: NOT reachable: {exc}")
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
