"""The image's entry point run outside a container, with the image's own environment
(docker/Dockerfile ENV), on a loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.docker.image_helpers import RUNTIME, env_of, expand

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = Path(sys.executable).parent / "resnet-serve"
HELM_TEST = ROOT / "charts" / "resnet-serve" / "files" / "helm_test.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The runtime stage's ENV, with the paths and the address moved onto this machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_")}
    image = env_of(RUNTIME)
    for key, value in image.items():
        if key.startswith("SERVE_") or key in (
            "KERAS_HOME",
            "PYTHONUNBUFFERED",
            "TF_CPP_MIN_LOG_LEVEL",
        ):
            env[key] = expand(value)
    env |= {
        "KERAS_HOME": str(tmp_path / "keras"),
        "HOME": str(tmp_path),
        # 0.0.0.0 in the image; loopback only here.
        "SERVE_HOST": "127.0.0.1",
        "SERVE_PORT": str(free_port()),
    }
    env |= overrides
    return env


def test_image_settings_refuse_to_start_without_weights(tmp_path):
    """SERVE_STRICT=true from the Dockerfile: with no weights the service exits instead of
    serving random weights (so a bad image or volume fails its rollout visibly)."""
    (tmp_path / "keras" / "models").mkdir(parents=True)
    env = image_env(tmp_path)
    assert env["SERVE_STRICT"] == "true" and env["SERVE_WEIGHTS"] == "imagenet"
    out = subprocess.run([str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode != 0
    assert "SERVE_STRICT" in out.stdout + out.stderr


@pytest.mark.timeout(300)
def test_entrypoint_serves_passes_the_helm_test_and_stops_on_sigterm(tmp_path):
    """The chart's helm test script against the real service (random weights, allowed
    explicitly here), then the image's STOPSIGNAL."""
    env = image_env(
        tmp_path,
        SERVE_WEIGHTS="random",
        SERVE_STRICT="false",
        SERVE_MAX_BATCH_SIZE="1",
        SERVE_BATCH_BUCKETS="1",
        SERVE_PREPROCESS_WORKERS="1",
    )
    server = subprocess.Popen(
        [str(ENTRYPOINT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        out = subprocess.run(
            [
                sys.executable,
                str(HELM_TEST),
                "--url",
                f"http://127.0.0.1:{env['SERVE_PORT']}",
                "--ready-timeout",
                "180",
                "--allow-random-weights",
            ],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "PASS: classified the test image" in out.stdout
        stop_signal = getattr(signal, [r for w, r in RUNTIME if w == "STOPSIGNAL"][-1])
        started = time.monotonic()
        server.send_signal(stop_signal)
        code = server.wait(timeout=60)
        # The service's own signal handler drains and exits 0 (it does not re-raise the
        # signal as plain uvicorn does), in a container or not.
        assert code == 0, server.stdout.read()[-3000:]
        assert time.monotonic() - started < 30
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
