"""A cpu-stage worker process's side of the worker pool (``worker_pool.py``): say ready, then
run one item at a time, reading it from the input slot (or the pipe) and writing the output
into the output slot (or the pipe), until the pool closes the pipe.

Imports nothing from TensorFlow: spawned workers import this module, and the functions they
run must not import it either.
"""

from __future__ import annotations

import importlib
import os
import pickle
import time
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from ..lifetime import die_with_parent

_FUNCTIONS: dict[str, Any] = {}


def _worker_init(niceness: int = 0) -> None:
    die_with_parent()
    # The workers yield the CPU to the model runner's threads: on a CPU node both compete, and
    # a worker that preempts one of TensorFlow's intra-op threads stalls the whole op. On a GPU
    # node the runner mostly waits on the device, so the workers get the CPU anyway.
    if niceness:
        os.nice(niceness)
    # One thread per worker for NumPy/Pillow: the pool is the parallelism.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def load_function(path: str) -> Any:
    """Import ``package.module:function`` (once per process)."""
    function = _FUNCTIONS.get(path)
    if function is None:
        module, _, name = path.partition(":")
        try:
            function = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ImportError(f"cannot import {path!r}: {exc}") from None
        if not callable(function):
            raise ImportError(f"{path!r} is not callable")
        _FUNCTIONS[path] = function
    return function


def _worker_apply(function_path: str, array: np.ndarray) -> tuple[np.ndarray, float]:
    """A cpu stage: ``function(array)`` as ``float32``, and the seconds it took."""
    start = time.perf_counter()
    out = np.asarray(load_function(function_path)(array), dtype=np.float32)
    return out, time.perf_counter() - start


def _attach(name: str | None) -> SharedMemory | None:
    return SharedMemory(name=name) if name else None


def buffer(shm: SharedMemory) -> memoryview:
    buf = shm.buf
    assert buf is not None, "shared memory is closed"
    return buf


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _work(function: str, payload: bytes, meta: Any) -> tuple[np.ndarray, float]:
    """One item: the function's output and the seconds it took."""
    dtype, shape = meta
    array = np.frombuffer(payload, dtype=dtype).reshape(shape)
    return _worker_apply(function, array)


def main(
    conn: Connection,
    niceness: int,
    input_name: str | None,
    output_name: str | None,
) -> None:
    """A worker's life: say ready, then answer one header (and slot) at a time until EOF."""
    _worker_init(niceness)
    slot_in, slot_out = _attach(input_name), _attach(output_name)
    try:
        conn.send_bytes(pickle.dumps(("ready", os.getpid(), 0)))
    except OSError:  # the pool was closed while this worker started
        return
    while True:
        try:
            function, size, meta = pickle.loads(conn.recv_bytes())
            payload = bytes(buffer(slot_in)[:size]) if size >= 0 and slot_in else conn.recv_bytes()
        except (EOFError, OSError):  # the server closed the pool or died
            return
        try:
            out, info = _work(function, payload, meta)
        except Exception as exc:
            reply: list = [("error", _picklable(exc), 0)]
        else:
            out = np.require(out, requirements="C")  # keeps 0-d outputs 0-d
            view = out.data.cast("B")
            head = ("ok", (info, out.dtype.str, out.shape), view.nbytes)
            if slot_out is not None and view.nbytes <= slot_out.size:
                buffer(slot_out)[: view.nbytes] = view
                reply = [head]
            else:
                reply = [(*head[:2], -1), view]
        try:
            conn.send_bytes(pickle.dumps(reply[0]))
            if len(reply) > 1:
                conn.send_bytes(reply[1])
        except OSError:  # the server closed the pool or died
            return
