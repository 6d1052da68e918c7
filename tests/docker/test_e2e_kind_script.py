"""scripts/e2e-kind.sh cannot run here (no Docker engine); what can be checked is that it
parses and that its preflight refuses cleanly, before creating anything, when a tool is missing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "e2e-kind.sh"


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_preflight_stops_without_kind(tmp_path):
    # A PATH with bash and coreutils only: no docker, no kind.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "env", "seq", "sleep"):
        os.symlink(
            f"/usr/bin/{tool}" if Path(f"/usr/bin/{tool}").exists() else f"/bin/{tool}",
            bin_dir / tool,
        )
    out = subprocess.run(
        ["bash", str(SCRIPT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": str(bin_dir), "HELM": "helm", "KUBECTL": "kubectl"},
    )
    assert out.returncode == 2
    assert "e2e-kind needs docker on PATH" in out.stderr
    assert "kind delete" not in out.stdout + out.stderr


def test_installs_the_cpu_values_and_runs_helm_test_and_locust():
    text = SCRIPT.read_text()
    assert "make image-cpu" in text and "kind load docker-image" in text
    assert "-f charts/resnet-serve/values-cpu.yaml" in text
    assert '"$HELM" test' in text and "--run-time 1m" in text
    assert "trap cleanup EXIT" in text and 'kind delete cluster --name "$CLUSTER"' in text
