"""What every process of the service does to live and die with the others."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Coroutine
from typing import Any

# Set by the supervisor in its children's environment: its own pid.
PARENT_PID_ENV = "RESNET_SERVE_PARENT_PID"


def die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent dies, even by SIGKILL, so that no
    front end, accelerator process or worker outlives the process that started it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: children notice a broken pipe instead
        pass
    # The parent died before prctl took effect: this process was handed to a reaper. The
    # supervisor names itself (PARENT_PID_ENV), as it may be PID 1 itself (a container's
    # entrypoint); a process started by anyone else can only compare with PID 1.
    expected = os.environ.pop(PARENT_PID_ENV, "")
    parent = os.getppid()
    if parent != int(expected) if expected.isdigit() else parent == 1:
        os._exit(1)


def settle_garbage_collector() -> int:
    """Move everything alive once a process is set up (the frameworks' modules, the models'
    graphs: ~450,000 objects in the accelerator process with TensorFlow and the stand-in model,
    ~80,000 in a front end) out of the cyclic collector's sight, and return how many.
    Serving allocates a few objects per item or request that die young; without this, every
    full collection walks the set-up's objects again (py-spy under make bench-engine: ~7 %
    of the accelerator process's samples at batches of one, docs/BENCHMARKS.md). New cycles
    are collected as before."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run`` on uvloop where it is installed (it is, with ``uvicorn[standard]``)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
