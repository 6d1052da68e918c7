"""The `helm install` commands in docs/DEPLOY.md and the chart README work as written
(rendered with `helm template`, which takes the same arguments, from the repository root)."""

from __future__ import annotations

import shlex

import pytest

from tests.chart.chart_helpers import CHART, ROOT, helm


def install_commands(path):
    text, commands, buf = path.read_text(), [], ""
    for line in text.splitlines():
        line = line.strip()
        if buf or line.startswith("helm install"):
            buf += line.rstrip("\\") + " "
            if not line.endswith("\\"):
                commands.append(buf.strip())
                buf = ""
    return commands


COMMANDS = [
    (doc.name, cmd)
    for doc in (ROOT / "docs" / "DEPLOY.md", CHART / "README.md")
    for cmd in install_commands(doc)
]


def test_docs_have_an_install_command_per_platform():
    joined = " ".join(cmd for _, cmd in COMMANDS)
    for platform in ("aks", "gke", "eks", "gpu-operator", "cpu"):
        assert f"values-{platform}.yaml" in joined


@pytest.mark.parametrize("doc, command", COMMANDS)
def test_documented_install_command_renders(doc, command, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = shlex.split(command)[2:]  # drop "helm install"
    args = [a for a in args if a != "--create-namespace"]
    out = helm("template", *args, check=False)
    assert out.returncode == 0, f"{doc}: {command}\n{out.stderr}"
    # The server runs as a Deployment, the load test (charts/locust) as Jobs.
    assert ("kind: Job" if "charts/locust" in command else "kind: Deployment") in out.stdout


def test_deploy_guide_states_what_each_platform_needs_and_what_was_proven():
    text = (ROOT / "docs" / "DEPLOY.md").read_text()
    aks = text.split("### AKS", 1)[1].split("###", 1)[0]
    assert "device plugin" in aks and "GPU Operator" in aks
    assert "kubernetes.azure.com/accelerator" in aks
    assert "does not exist" not in text  # the Redis URL setting does
    assert "SERVE_REDIS_URL" in text and "`redis` extra" in text
    assert "## What is proven, and how" in text and "**Not proven here.**" in text
    size = text.split("### Expected size (an estimate)", 1)[1].split("##", 1)[0]
    assert "GPU image" in size and "GB" in size
    assert "helm test resnet --namespace ml --logs --timeout 900s" in text
