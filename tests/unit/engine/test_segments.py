"""A run's shared-memory segments carry its name, and a later run removes those of a run that
was killed (wire/segments.py)."""

from __future__ import annotations

from multiprocessing import resource_tracker

import pytest

from service.wire import segments


def _run(base, name: str, monkeypatch, held: bool) -> tuple[object, list[str]]:
    """A run directory with its lock file (held by this process, or left as a killed run
    leaves it) and two segments named after it."""
    run_dir = base / name
    run_dir.mkdir()
    lock = segments.hold(run_dir)
    if not held:
        lock.close()
    monkeypatch.setenv(segments.TAG_ENV, name)
    names = []
    for _ in range(2):
        shm = segments.create(4096)
        shm.close()
        # As a killed run leaves them: nobody left to unlink them at exit.
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
        names.append(shm.name)
    return lock, names


def test_a_killed_runs_directory_and_segments_go_and_a_running_ones_stay(tmp_path, monkeypatch):
    if not segments.SHM.is_dir():
        pytest.skip("no /dev/shm")
    prefix = f"rs-test-{tmp_path.name}-"
    _, dead = _run(tmp_path, prefix + "killed", monkeypatch, held=False)
    lock, live = _run(tmp_path, prefix + "running", monkeypatch, held=True)
    (tmp_path / (prefix + "starting")).mkdir()  # no lock file yet: not judged
    try:
        assert all(name.startswith(prefix + "killed-") for name in dead)
        assert segments.remove_stale(tmp_path, prefix) == 1
        assert not (tmp_path / (prefix + "killed")).exists()
        assert not any((segments.SHM / name).exists() for name in dead)
        assert (tmp_path / (prefix + "running") / segments.LOCK).exists()
        assert all((segments.SHM / name).exists() for name in live)
        assert (tmp_path / (prefix + "starting")).is_dir()
    finally:
        lock.close()  # type: ignore[attr-defined]
        for name in live + dead:
            (segments.SHM / name).unlink(missing_ok=True)


def test_outside_a_run_segments_keep_pythons_names(monkeypatch):
    monkeypatch.delenv(segments.TAG_ENV, raising=False)
    shm = segments.create(4096)
    try:
        assert shm.name.startswith("psm_")
    finally:
        shm.close()
        shm.unlink()
