"""docker/Dockerfile, checked without a Docker engine: hadolint, and the facts the image and
the chart rely on (entry point, settings, user, port, signal, weights path). The CUDA stack:
test_cuda_stack.py; what the chart's features need from the image: test_chart_image_contract.py."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.docker.image_helpers import (
    DOCKERFILE,
    PYPROJECT,
    ROOT,
    RUNTIME,
    arg_default,
    build_arg,
    env_of,
    expand,
    image_extras,
    last,
    stages,
)

HADOLINT = ROOT / ".tools" / "venv" / "bin" / "hadolint"
CHART = ROOT / "charts" / "resnet-serve"


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    if not HADOLINT.exists():
        raise AssertionError(f"{HADOLINT} is missing: run `make tools` (make test does it)")
    return subprocess.run([str(HADOLINT), str(path)], capture_output=True, text=True, timeout=60)


def test_hadolint_passes():
    out = hadolint(DOCKERFILE)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM ubuntu:latest\nRUN apt-get install curl\nRUN cd /tmp && pip install requests\n"
    )
    out = hadolint(bad)
    assert out.returncode != 0
    for rule in ("DL3007", "DL3015", "DL3013"):
        assert rule in out.stdout


def test_every_hadolint_ignore_is_explained():
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            rule = line.split("=", 1)[1].strip()
            context = "\n".join(lines[max(0, i - 4) : i])
            assert rule in context and len(context) > 60, (
                f"no reason given for {rule} at line {i + 1}"
            )


def test_entrypoint_is_the_declared_console_script():
    assert json.loads(last("ENTRYPOINT")) == ["resnet-serve"]
    target = PYPROJECT["project"]["scripts"]["resnet-serve"]
    module, _, func = target.partition(":")
    assert module == "service.__main__"
    assert callable(getattr(importlib.import_module(module), func))
    assert "CMD" not in {w for w, _ in RUNTIME}, "arguments would override settings from env"


def test_settings_in_the_image_are_real_settings(monkeypatch):
    from service.settings import Settings

    env = env_of(RUNTIME)
    serve = {k: v for k, v in env.items() if k.startswith("SERVE_")}
    fields = {f"SERVE_{name.upper()}" for name in Settings.model_fields}
    assert set(serve) <= fields, set(serve) - fields
    for key in fields:
        monkeypatch.delenv(key, raising=False)
    for key, value in serve.items():
        monkeypatch.setenv(key, expand(value))
    settings = Settings()
    assert settings.host == "0.0.0.0" and settings.port == 8000 and settings.grpc_port == 8001
    assert settings.strict is True and settings.weights == "imagenet"
    assert settings.model == "resnet50"


def test_image_matches_the_chart():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    env = env_of(RUNTIME)
    user = last("USER")
    assert user == "10001:10001"
    assert (
        values["podSecurityContext"]["runAsUser"] == 10001 == values["securityContext"]["runAsUser"]
    )
    assert values["podSecurityContext"]["runAsGroup"] == 10001
    http, grpc = last("EXPOSE").split()
    assert http == env["SERVE_PORT"] == str(values["containerPort"])
    assert grpc == env["SERVE_GRPC_PORT"] == str(values["grpc"]["containerPort"])
    # The chart's KERAS_HOME for weights.source=image is the folder baked into the image.
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert f'"image" }}}}{env["KERAS_HOME"]}{{{{' in helpers
    assert any(
        w == "COPY" and rest.endswith(f"{env['KERAS_HOME']} {env['KERAS_HOME']}")
        for w, rest in RUNTIME
    )
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == PYPROJECT["project"]["version"] == arg_default("VERSION")


def test_graceful_stop():
    assert last("STOPSIGNAL") == "SIGTERM"
    assert "/healthz" in last("HEALTHCHECK")


def test_runtime_stage_is_lean_and_unprivileged():
    runs = " ".join(rest for w, rest in RUNTIME if w == "RUN")
    for banned in (
        "build-essential",
        "gcc",
        "g++",
        "python3-dev",
        "python3-pip",
        "python3-venv",
        "curl",
    ):
        assert not re.search(rf"(?<![\w-]){re.escape(banned)}(?![\w-])", runs), banned
    assert "rm -rf /var/lib/apt/lists/*" in runs and "--no-install-recommends" in runs
    build_runs = " ".join(rest for w, rest in stages()["build"] if w == "RUN")
    assert "pip uninstall -y pip" in build_runs
    assert env_of(stages()["build"])["PIP_NO_CACHE_DIR"] == "1"
    copies = [rest for w, rest in RUNTIME if w == "COPY"]
    assert all(c.startswith("--from=build ") for c in copies), copies
    # The runtime stage switches to the unprivileged user before the entry point.
    words = [w for w, _ in RUNTIME]
    assert words.index("USER") < words.index("ENTRYPOINT")


def test_weights_are_baked_unless_the_build_argument_says_no():
    build = stages()["build"]
    assert arg_default("BAKE_WEIGHTS") == "true"
    fetch = next(rest for w, rest in build if w == "RUN" and "fetch_weights" in rest)
    assert 'if [ "${BAKE_WEIGHTS}" = "true" ]' in fetch
    assert "python -m service.model.fetch_weights --model" in fetch
    assert env_of(build)["KERAS_HOME"] == env_of(RUNTIME)["KERAS_HOME"]


def test_the_weights_fetch_command_of_the_build_exists():
    out = subprocess.run(
        [sys.executable, "-m", "service.model.fetch_weights", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "--model" in out.stdout


def test_cpu_variant_uses_the_same_os_without_cuda():
    assert build_arg("image-cpu", "BASE_IMAGE") == "ubuntu:24.04"
    assert build_arg("image", "BASE_IMAGE") is None  # the Dockerfile's CUDA base
    assert "gpu" in image_extras("gpu") and "gpu" not in image_extras("cpu")
    assert image_extras("gpu") == set(arg_default("EXTRAS").split(","))
    assert "gpu" in PYPROJECT["project"]["optional-dependencies"]


def test_dockerignore_sends_only_the_package_and_its_pins():
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    pins = {"docker/constraints.txt", "docker/constraints-jax.txt"}
    assert allowed == {"pyproject.toml", "README.md", "service", *pins}
    copied = {
        expand(part).rstrip("*/")
        for w, rest in stages()["build"]
        if w == "COPY"
        for part in rest.split()[:-1]
    }
    assert copied <= allowed | {"README.md"}, copied
