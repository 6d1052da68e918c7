"""The shared-memory segments of one run of the pod, named after its run directory, so that a
later run can remove what this one leaves behind.

The front ends' arenas and the preprocessing workers' slots live in ``/dev/shm``, which in
Kubernetes is the pod's memory-backed emptyDir: it outlives the container, and what it holds
counts against the pod's memory limit. A process that exits unlinks its segments (itself or
through its resource tracker), but when the container is killed as a whole (an OOM kill), no
process is left to, and each restart would leave a few MiB per CPU behind until ``/dev/shm``
is full and the front ends run without shared memory.

So the supervisor holds a lock file in its run directory for as long as it runs, and names
every segment of its run ``<run directory's name>-<random>`` (its children read the name from
:data:`TAG_ENV`). At start it removes the run directories, and their segments, of every run
whose lock nobody holds (:func:`remove_stale`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

# The run's tag, in the environment of the supervisor's children.
TAG_ENV = "RESNET_SERVE_RUN"
LOCK = "run.lock"  # in the run directory, held by its supervisor (flock) while it runs
SHM = Path("/dev/shm")  # where POSIX shared memory segments are named on Linux


def create(size: int) -> SharedMemory:
    """A new segment of ``size`` bytes, named after this run where there is one."""
    tag = os.environ.get(TAG_ENV)
    if not tag:
        return SharedMemory(create=True, size=size)
    while True:
        try:
            return SharedMemory(name=f"{tag}-{secrets.token_hex(8)}", create=True, size=size)
        except FileExistsError:  # pragma: no cover - 64 random bits
            continue


def hold(run_dir: Path) -> IO[bytes]:
    """Lock ``run_dir`` for this process's life (keep the returned file open). The lock file
    takes its name only once locked, so :func:`remove_stale` never sees it unheld."""
    pending = run_dir / f".{LOCK}"
    lock = open(pending, "wb")  # noqa: SIM115 - held open for the process's life
    fcntl.flock(lock, fcntl.LOCK_EX)
    pending.rename(run_dir / LOCK)
    return lock


def remove_stale(base: Path, prefix: str) -> int:
    """Remove the run directories ``base/<prefix>*`` whose lock nobody holds, and their
    segments. A directory without a lock file is left alone. Returns how many were removed."""
    removed = 0
    for run_dir in sorted(base.glob(f"{prefix}*")):
        try:
            lock = open(run_dir / LOCK, "rb")  # noqa: SIM115 - closed below
        except OSError:  # not a run directory, no lock yet, or not ours to open
            continue
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # its supervisor runs
                continue
            segments = [p for p in SHM.glob(f"{run_dir.name}-*") if not p.is_dir()]
            for segment in segments:
                with contextlib.suppress(OSError):
                    segment.unlink()
            shutil.rmtree(run_dir, ignore_errors=True)
        log.warning(
            "removed %s and its %d shared-memory segments: a run that was killed",
            run_dir,
            len(segments),
        )
        removed += 1
    return removed
