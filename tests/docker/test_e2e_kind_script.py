"""scripts/e2e-kind.sh cannot run here (no Docker engine); what can be checked is that it
parses, that its preflight refuses cleanly before creating anything when a tool is missing, that
it checks what the offline tests cannot, and that the pieces it derives here (the helm test
timeout from NOTES, the job's test image) come out right."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "e2e-kind.sh"
HELM = ROOT / ".tools" / "bin" / "helm"


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


def test_installs_the_cpu_values_and_checks_what_the_offline_tests_cannot():
    text = SCRIPT.read_text()
    assert "make image-cpu" in text and "kind load docker-image" in text
    assert "-f charts/resnet-serve/values-cpu.yaml" in text
    assert "trap cleanup EXIT" in text and 'kind delete cluster --name "$CLUSTER"' in text
    # The image has the redis extra and CA certificates; the server runs with an in-chart
    # Redis and a job goes through it.
    assert "import ssl, redis.asyncio" in text and "x509_ca" in text
    assert "--set redis.mode=internal" in text and "/v1/jobs" in text
    # SERVE_CPUS from a 500m request: one preprocessing worker.
    assert "--set resources.requests.cpu=500m" in text and "preprocess_workers'] == 1" in text
    # /metrics on the Service's metrics port.
    assert '"$METRICS_PORT:9090"' in text and "serve_images_in_flight" in text
    # The Locust chart runs once in the cluster and its reports come out.
    assert "charts/locust" in text and "--set test.autostart=true" in text
    assert 'cp "$pod:/reports"' in text and "-m loadtest report" in text


def test_helm_test_runs_with_the_timeout_the_notes_print():
    text = SCRIPT.read_text()
    (expression,) = re.findall(r"sed -n '([^']*)'", text)
    assert (
        '"$HELM" test "$RELEASE" --namespace "$NAMESPACE" --logs --timeout "$test_timeout"' in text
    )
    notes = subprocess.run(
        [
            str(HELM),
            "install",
            "e2e",
            str(ROOT / "charts" / "resnet-serve"),
            "--dry-run=client",
            "-f",
            str(ROOT / "charts" / "resnet-serve" / "values-cpu.yaml"),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split("NOTES:", 1)[1]
    out = subprocess.run(["sed", "-n", expression], input=notes, capture_output=True, text=True)
    assert out.stdout.strip() == "900s"


def test_the_jobs_test_image_is_a_png(tmp_path):
    text = SCRIPT.read_text()
    (snippet,) = re.findall(r'"\$PYTHON" -c "(import sys; sys\.path\.insert[^"]*)"', text)
    out = subprocess.run(
        [sys.executable, "-c", snippet.replace("\\\n", "")],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.startswith(b"\x89PNG"), out.stderr
