"""service.lifetime.die_with_parent: a child whose parent is gone stops at once; a child of a
supervisor that is PID 1 (a container's entrypoint) lives. Real processes: the second case
in a PID namespace of its own (unshare, as root), where the parent is PID 1 as in a pod."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from service.lifetime import PARENT_PID_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
# A parent that starts a child calling die_with_parent(), naming itself as the supervisor
# does, or not; the child prints "alive" if it survives the call.
PARENT = textwrap.dedent(
    f"""
    import os, subprocess, sys
    name_self = sys.argv[1] == "name"
    env = dict(os.environ)
    if name_self:
        env[{PARENT_PID_ENV!r}] = str(os.getpid())
    child = "from service.lifetime import die_with_parent; die_with_parent(); print('alive')"
    out = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True)
    print(f"pid={{os.getpid()}} rc={{out.returncode}} out={{out.stdout.strip()}}")
    """
)


def run_parent(mode: str, *prefix: str) -> str:
    out = subprocess.run(
        [*prefix, sys.executable, "-c", PARENT, mode],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_child_of_a_live_parent_lives():
    assert run_parent("name").endswith("rc=0 out=alive")
    assert run_parent("anonymous").endswith("rc=0 out=alive")


def test_a_wrong_parent_pid_means_the_parent_is_gone(monkeypatch):
    monkeypatch.setenv(PARENT_PID_ENV, "999999999")
    child = "from service.lifetime import die_with_parent; die_with_parent(); print('alive')"
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and "alive" not in out.stdout


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare"
)
def test_child_of_a_supervisor_that_is_pid_1_lives():
    """As in a container: the supervisor is PID 1, so its children's parent pid is 1."""
    out = run_parent("name", "unshare", "--pid", "--fork", "--mount-proc")
    assert out.startswith("pid=1 ") and out.endswith("rc=0 out=alive"), out
