"""The Keras backend the model stage runs on: ``SERVE_BACKEND`` (tensorflow, the default, or
jax).

Keras 3 reads its backend once, when it is first imported (``KERAS_BACKEND``), so
:func:`select` runs before anything imports Keras: first thing in the accelerator process.
Each backend module configures its framework for the machine (threads, GPU memory, precision)
and supplies the ``ModelRunner`` that compiles the model its way.

PyTorch is not one of them: PyPI's Linux ``torch`` wheel is the CUDA build (about 3 GB with its
``nvidia-*`` wheels), which would more than double ``make test``'s install on a fresh machine,
and the CPU build is only on PyTorch's own index (docs/BENCHMARKS.md, "Backends").
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import TYPE_CHECKING

from ...errors import BackendUnavailable

if TYPE_CHECKING:
    from ...settings import Settings
    from ..loader import LoadedModel
    from ..runner import ModelRunner

BACKENDS = ("tensorflow", "jax")
# What each backend needs installed, and the extra that installs it.
MODULES = {"tensorflow": "tensorflow", "jax": "jax"}
EXTRAS = {"tensorflow": "tensorflow (or gpu)", "jax": "jax (or jax-gpu)"}


def check(backend: str) -> None:
    """Refuse at start, with what to do, a backend that is not installed or that Keras cannot
    switch to any more in this process."""
    if backend not in BACKENDS:
        raise BackendUnavailable(f"SERVE_BACKEND={backend!r}; the backends are {list(BACKENDS)}")
    if importlib.util.find_spec(MODULES[backend]) is None:
        raise BackendUnavailable(
            f"SERVE_BACKEND={backend} but {MODULES[backend]} is not installed: install the "
            f"resnet-serve extra {EXTRAS[backend]}"
        )
    if "keras" in sys.modules:
        import keras

        current = keras.backend.backend()
        if current != backend:
            raise BackendUnavailable(
                f"SERVE_BACKEND={backend} but Keras was imported with {current} in this "
                "process (the backend is chosen at Keras's first import)"
            )


def select(backend: str) -> None:
    """Make ``backend`` the one Keras loads (before Keras is first imported)."""
    check(backend)
    os.environ["KERAS_BACKEND"] = backend


def current() -> str:
    import keras

    return str(keras.backend.backend())


def configure(settings: Settings) -> None:
    """Process-wide settings of the current backend; call before any model is built."""
    if current() == "jax":
        from .jax import configure as configure_jax

        configure_jax(
            memory_fraction=settings.jax_memory_fraction,
            mixed_precision=settings.mixed_precision,
        )
    else:
        from .tensorflow import configure as configure_tensorflow

        configure_tensorflow(
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            mixed_precision=settings.mixed_precision,
            model_instances=settings.model_instances,
            cpus=settings.cpu_count,
        )


class GpuUnavailable(RuntimeError):
    """SERVE_REQUIRE_GPU is set and the backend sees no GPU."""


def gpu_devices() -> list[str]:
    """The GPUs the current backend can run on."""
    if current() == "jax":
        import jax

        return [str(d) for d in jax.devices() if d.platform == "gpu"]
    import tensorflow as tf

    return [d.name for d in tf.config.list_physical_devices("GPU")]


def require_gpu(settings: Settings) -> None:
    """Raise GpuUnavailable, with what to look at, when SERVE_REQUIRE_GPU finds no GPU."""
    if settings.require_gpu and not gpu_devices():
        raise GpuUnavailable(
            f"SERVE_REQUIRE_GPU=true and the {current()} backend sees no GPU: refusing to run "
            "the model on the CPU. Check the pod's RuntimeClass (runtimeClassName), that the "
            "node's NVIDIA driver supports the image's CUDA, and NVIDIA_VISIBLE_DEVICES."
        )


def runner_class() -> type[ModelRunner]:
    if current() == "jax":
        from .jax import JaxRunner

        return JaxRunner
    from .tensorflow import TensorFlowRunner

    return TensorFlowRunner


def make_runner(loaded: LoadedModel, buckets: list[int], *, xla: bool = False) -> ModelRunner:
    """The runner of the Keras backend this process runs (:func:`select`)."""
    return runner_class()(loaded, buckets, xla=xla)
