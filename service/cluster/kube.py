"""Clients from a kubeconfig (or the pod's service account), and small helpers."""

from __future__ import annotations

from typing import Any


class ClusterUnreachable(Exception):
    """No kubeconfig, or the API server did not answer."""


def api_client(kubeconfig: str | None = None, context: str | None = None):
    """An ``ApiClient`` for ``kubeconfig``/``context``; in a pod without a kubeconfig, the
    service account's."""
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    try:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except (ConfigException, FileNotFoundError, OSError) as exc:
        if kubeconfig is None:
            try:
                config.load_incluster_config()
                from kubernetes import client

                return client.ApiClient()
            except ConfigException:
                pass
        raise ClusterUnreachable(f"no usable kubeconfig: {exc}") from None


def quantity(value: Any) -> float:
    """A Kubernetes quantity (``2``, ``500m``, ``1Gi``) as a number."""
    if value is None:
        return 0.0
    from kubernetes.utils import parse_quantity

    return float(parse_quantity(str(value)))


def pod_ready(pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
