"""checkov on the rendered manifests of every shipped values file and on the Dockerfile:
no failing check is left unexplained, and no explanation is kept for a check that passes."""

from __future__ import annotations

import json
import re
import subprocess

from tests.chart.chart_helpers import (
    CHECKOV,
    CI_VALUES,
    PLATFORM_VALUES,
    ROOT,
    render_text,
    require,
)

# (check, kind) -> why the chart deliberately does not do what the check asks.
EXPLAINED = {
    (
        "CKV_K8S_11",
        "Deployment",
    ): "no CPU limit on the model server by default: CFS throttling stalls the preprocessing "
    "pool and the batcher under load; a CPU request is set (and resources.limits.cpu can be)",
    (
        "CKV_K8S_15",
        "Deployment",
    ): "imagePullPolicy IfNotPresent: the GPU image is several GB and tags are immutable "
    "releases; pin image.digest for stronger guarantees",
    (
        "CKV_K8S_15",
        "Pod",
    ): "the helm test pod's image is a pinned tag of a small Python image (or the server's, "
    "already on its node): IfNotPresent, like the server",
    (
        "CKV_K8S_43",
        "Deployment",
    ): "the chart cannot know the digest of the user's build: image.digest is supported and "
    "ci/servicemonitor-values.yaml renders it; the default is the release tag",
    (
        "CKV_K8S_43",
        "Pod",
    ): "the test pod's image is a tag of a public Python image (tests.image, digest-free so "
    "mirrors can serve it) or the server's own reference",
    ("CKV_K8S_8", "Pod"): "the helm test pod is a one-shot client that exits; probes do not apply",
    ("CKV_K8S_9", "Pod"): "the helm test pod is a one-shot client that exits; probes do not apply",
    (
        "CKV2_K8S_6",
        "Pod",
    ): "NetworkPolicy is opt-in (networkPolicy.enabled) since it needs a CNI that enforces it; "
    "when on, the server's policy admits the test pod by its labels",
    (
        "CKV_K8S_35",
        "Deployment",
    ): "the Redis URL comes from a Secret as an environment variable because every service "
    "setting is an environment variable (SERVE_*, service/settings.py)",
    ("CKV_K8S_35", "Pod"): "the helm test pod reads the token it sends from where the server "
    "reads SERVE_AUTH_TOKENS: an environment variable from the same Secret",
}


def run_checkov(*args: str) -> list[dict]:
    out = subprocess.run(
        [str(require(CHECKOV)), *args, "--skip-download", "--compact", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode in (0, 1), out.stderr[-2000:]
    data = json.loads(out.stdout)
    return data if isinstance(data, list) else [data]


def test_checkov_on_rendered_manifests(tmp_path):
    for values in ["", *PLATFORM_VALUES, *CI_VALUES]:
        name = (values or "defaults").replace("/", "_")
        (tmp_path / name).write_text(render_text((values,) if values else ()))
    reports = run_checkov("-d", str(tmp_path), "--framework", "kubernetes")
    failed = {
        (f["check_id"], f["resource"].split(".")[0])
        for r in reports
        for f in r["results"]["failed_checks"]
    }
    passed = sum(r["summary"]["passed"] for r in reports)
    assert passed > 1000, "checkov checked almost nothing"
    unexplained = failed - EXPLAINED.keys()
    assert not unexplained, f"failing checkov checks with no explanation: {sorted(unexplained)}"
    stale = EXPLAINED.keys() - failed
    assert not stale, f"explained checks that no longer fail (drop them): {sorted(stale)}"
    assert all(len(reason) > 30 for reason in EXPLAINED.values())


def test_checkov_on_the_dockerfile():
    dockerfile = ROOT / "docker" / "Dockerfile"
    (report,) = run_checkov("-f", str(dockerfile), "--framework", "dockerfile")
    assert report["summary"]["failed"] == 0, report["results"]["failed_checks"]
    assert report["summary"]["passed"] > 20
    # Every inline skip carries a reason: `#checkov:skip=ID:reason`.
    skips = re.findall(r"#checkov:skip=([A-Z0-9_]+)(?::(.*))?", dockerfile.read_text())
    assert skips and all(reason and len(reason.strip()) > 20 for _, reason in skips), skips
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    assert skipped == {check for check, _ in skips}
