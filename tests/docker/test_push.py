"""`make push` pushes the image variants built here, whichever they are (docs/DEPLOY.md)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A docker that has the given tags and records what it pushes.
FAKE_DOCKER = """#!/bin/sh
case "$1 $2" in
  "image inspect") grep -qx "$3" "{have}" ;;
  push*) echo "$2" >> "{pushed}" ;;
esac
"""


def push(tmp_path: Path, have: list[str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    (tmp_path / "have").write_text("".join(f"{tag}\n" for tag in have))
    docker = tmp_path / "docker"
    docker.write_text(FAKE_DOCKER.format(have=tmp_path / "have", pushed=tmp_path / "pushed"))
    docker.chmod(0o755)
    run = subprocess.run(
        ["make", "-s", "push", "REGISTRY=r.example/acme", "TAG=9", f"DOCKER={docker}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    pushed = tmp_path / "pushed"
    return run, pushed.read_text().split() if pushed.exists() else []


def test_push_sends_the_variants_that_exist(tmp_path):
    image = "r.example/acme/resnet-serve"
    run, pushed = push(tmp_path, [f"{image}:9", f"{image}:9-jax"])
    assert run.returncode == 0, run.stderr
    assert pushed == [f"{image}:9", f"{image}:9-jax"]


def test_push_without_any_image_says_what_to_build(tmp_path):
    run, pushed = push(tmp_path, [])
    assert run.returncode != 0 and pushed == []
    assert "make image (image-cpu, image-jax) first" in run.stdout + run.stderr
