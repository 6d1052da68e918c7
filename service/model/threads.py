"""How a model's work is spread over the machine: runner instances and TensorFlow's pools.

On a GPU one instance executes batches back to back. On a CPU, several single-threaded
instances (OpenVINO calls them streams, Triton an instance group) beat one instance whose ops
are split over every core: a split op waits at its end for its slowest thread, so any other
work on the machine (decoding, HTTP, the load generator) stalls every thread of it, while a
single-threaded instance only loses the time it is descheduled; and one thread per op spends
nothing on splitting. Measured on this project's 2-core machine (docs/BENCHMARKS.md): the
compiled ResNet50 alone makes 36-39 images/s as two single-threaded instances against 32-35 as
one two-threaded instance, and the service under load gains more than that.

TensorFlow's intra-op pool is one per process, shared by every instance: two instances on a
shared two-thread pool busy-wait on each other (measured: 25 images/s in the service, worse than
one instance). So with several instances on a CPU, unless set explicitly, ops run in the
inter-op thread that calls them (``intra_op_threads`` 1) and there are at least as many inter-op
threads as instances.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Auto on a CPU: one instance per core, at most this many (each holds its own activations).
MAX_AUTO_CPU_INSTANCES = 8


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadPlan:
    """Runner instances per model stage and TensorFlow's pool sizes (0: TensorFlow's default)."""

    instances: int
    intra_op_threads: int
    inter_op_threads: int


def plan_threads(
    *, instances: int, intra_op_threads: int, inter_op_threads: int, gpu: bool, cpus: int
) -> ThreadPlan:
    """Resolve the settings' automatic values (0) for a machine with or without a GPU.

    Args:
        instances: ``SERVE_MODEL_INSTANCES``; 0: one on a GPU, one per CPU core (up to
            ``MAX_AUTO_CPU_INSTANCES``) without one.
        intra_op_threads: ``SERVE_INTRA_OP_THREADS``; kept when set.
        inter_op_threads: ``SERVE_INTER_OP_THREADS``; kept when set.
        gpu: whether TensorFlow sees a GPU.
        cpus: the CPUs this process may use.
    """
    if instances <= 0:
        instances = 1 if gpu else max(1, min(cpus, MAX_AUTO_CPU_INSTANCES))
    if not gpu and instances > 1:
        intra_op_threads = intra_op_threads or 1
        inter_op_threads = inter_op_threads or max(2, instances)
    return ThreadPlan(instances, intra_op_threads, inter_op_threads)
