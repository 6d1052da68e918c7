"""Debian's prometheus and promtool for the monitoring tests: found on PATH, else installed
(`make prometheus` does the same for `make test`)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

import pytest


@functools.cache
def binary(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``, installing Debian's package if missing."""
    found = shutil.which(name)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
            env=env,
            check=False,
            timeout=900,
        )
        found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing and could not be installed: run `make prometheus`")
    return found


def promtool(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )
