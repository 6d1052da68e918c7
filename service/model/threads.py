"""How a model's work is spread over the machine: runner instances and TensorFlow's pools.

On a GPU one instance executes batches back to back. On a CPU, several single-threaded
instances (OpenVINO calls them streams, Triton an instance group) beat one instance whose ops
are split over every core: a split op waits at its end for its slowest thread, so any other
work on the machine (decoding, HTTP, the load generator) stalls every thread of it, while a
single-threaded instance only loses the time it is descheduled; and one thread per op spends
nothing on splitting. docs/BENCHMARKS.md has the measurements, model alone and service.

TensorFlow's intra-op pool is one per process, shared by every instance: two instances on a
shared two-thread pool busy-wait on each other (slower than one instance, measured). So with
several instances on a CPU, unless set explicitly, ops run in the inter-op thread that calls
them (``intra_op_threads`` 1) and there are at least as many inter-op threads as instances.
"""

from __future__ import annotations

from dataclasses import dataclass

# Auto on a CPU: one instance per core, at most this many (each holds its own activations).
MAX_AUTO_CPU_INSTANCES = 8


@dataclass(frozen=True)
class ThreadPlan:
    """Runner instances per model stage and TensorFlow's pool sizes (0: TensorFlow's default)."""

    instances: int
    intra_op_threads: int
    inter_op_threads: int


def instance_count(instances: int, *, gpu: bool, cpus: int) -> int:
    """``SERVE_MODEL_INSTANCES`` resolved: kept when set; 0: one on a GPU, one per CPU core (up
    to ``MAX_AUTO_CPU_INSTANCES``) without one."""
    if instances > 0:
        return instances
    return 1 if gpu else max(1, min(cpus, MAX_AUTO_CPU_INSTANCES))


def plan_threads(
    *, instances: int, intra_op_threads: int, inter_op_threads: int, gpu: bool, cpus: int
) -> ThreadPlan:
    """Resolve the settings' automatic values (0) for a machine with or without a GPU.

    Args:
        instances: ``SERVE_MODEL_INSTANCES`` (see :func:`instance_count`).
        intra_op_threads: ``SERVE_INTRA_OP_THREADS``; kept when set.
        inter_op_threads: ``SERVE_INTER_OP_THREADS``; kept when set.
        gpu: whether TensorFlow sees a GPU.
        cpus: the CPUs this process may use.
    """
    instances = instance_count(instances, gpu=gpu, cpus=cpus)
    if not gpu and instances > 1:
        intra_op_threads = intra_op_threads or 1
        inter_op_threads = inter_op_threads or max(2, instances)
    return ThreadPlan(instances, intra_op_threads, inter_op_threads)
