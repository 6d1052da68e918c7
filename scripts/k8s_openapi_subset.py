"""Write the strict JSON schemas of Kubernetes v1.20 that the chart tests validate against.

kubernetes-validate ships schemas from 1.25 on; the oldest cluster the charts support is 1.20.
This reads the OpenAPI document of the v1.20 tree `make e2e` builds from
(`~/.cache/resnet-serve/e2e/kube/src/tree/api/openapi-spec/swagger.json`, Debian's `kubernetes` source) and
keeps the kinds the charts render and the definitions they reach, without descriptions.

Strict as the API server's server-side apply is: objects refuse unknown fields; a Quantity is
a string (an unquoted number is what helm 4's apply is refused on 1.20 for); IntOrString is
either.

  python scripts/k8s_openapi_subset.py SWAGGER_JSON tests/chart/k8s-v1.20-openapi.json v1.20.2

(The document's own info.version says "unversioned": the version is given.)
"""

from __future__ import annotations

import json
import sys
from typing import Any

KINDS = {
    ("v1", "ConfigMap"),
    ("v1", "Pod"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("batch/v1", "Job"),
    ("autoscaling/v2beta2", "HorizontalPodAutoscaler"),
    ("policy/v1beta1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "Ingress"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
}
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"


def strict(node: Any) -> Any:
    if isinstance(node, dict):
        out = {
            k: strict(v) for k, v in node.items() if k != "description" and not k.startswith("x-")
        }
        if "$ref" in out:
            return {"$ref": out["$ref"]}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].rsplit("/", 1)[1]} if "$ref" in node else set()
        for v in node.values():
            found |= refs(v)
        return found
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node)) if node else set()
    return set()


def subset(swagger: dict, version: str) -> dict:
    definitions = swagger["definitions"]
    kinds: dict[str, str] = {}
    for name, d in definitions.items():
        for gvk in d.get("x-kubernetes-group-version-kind", []):
            api = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            if (api, gvk["kind"]) in KINDS:
                kinds[f"{api}/{gvk['kind']}"] = name
    missing = {f"{a}/{k}" for a, k in KINDS} - set(kinds)
    if missing:
        raise SystemExit(f"not in this OpenAPI document: {sorted(missing)}")
    keep: set[str] = set()
    todo = list(kinds.values())
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo += refs(definitions[name]) - keep
    out = {name: strict(definitions[name]) for name in sorted(keep)}
    out[INT_OR_STRING] = {"type": ["integer", "string"]}
    return {
        "kubernetesVersion": version,
        "kinds": dict(sorted(kinds.items())),
        "definitions": out,
    }


def main() -> None:
    source, dest, version = sys.argv[1:4]
    with open(source) as f:
        result = subset(json.load(f), version)
    with open(dest, "w") as f:
        json.dump(result, f, indent=0, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
