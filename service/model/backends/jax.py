"""JAX: ``jax.jit`` over the model's stateless call (weights as arguments, on the device once),
compiled by XLA once per bucket at warm-up; GPU memory taken as needed, or a fixed fraction.

Configured before JAX is imported (XLA reads its memory settings from the environment): the
accelerator process selects the backend, then builds the model.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..precision import precision_policy
from ..runner import ModelRunner, graph_normalize


def environment(memory_fraction: float) -> dict[str, str]:
    """XLA's memory settings for JAX: preallocate ``memory_fraction`` of the GPU's memory
    (``SERVE_JAX_MEMORY_FRACTION``), or (0) allocate as needed, so that a pod holds its GPU's
    memory only as far as it uses it."""
    if memory_fraction > 0:
        return {
            "XLA_PYTHON_CLIENT_PREALLOCATE": "true",
            "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{memory_fraction:g}",
        }
    return {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


def configure(*, memory_fraction: float = 0.0, mixed_precision: str = "off") -> None:
    """Memory (it counts only before JAX initialises its GPU) and the precision policy."""
    for key, value in environment(memory_fraction).items():
        os.environ.setdefault(key, value)
    import keras

    keras.mixed_precision.set_global_policy(precision_policy(mixed_precision))


class JaxRunner(ModelRunner):
    backend = "jax"

    def _compile(self, xla: bool) -> None:
        import jax
        from keras import ops

        model, mode, images = self.loaded.model, self.loaded.normalize, self.images

        def forward(trainable: Any, non_trainable: Any, x: Any) -> Any:
            x = ops.cast(x, "float32")
            if images:
                x = graph_normalize(x, mode)
            out, _ = model.stateless_call(trainable, non_trainable, x, training=False)
            return ops.cast(out, "float32")

        self._jax = jax
        self._host = jax.devices()[0].platform == "cpu"
        self._fn = jax.jit(forward)
        self._state = jax.device_put(
            (
                [v.value for v in model.trainable_variables],
                [v.value for v in model.non_trainable_variables],
            )
        )

    def _transfer(self, batch: np.ndarray) -> Any:
        # Asynchronous on a GPU: the copy runs while the batch before computes. The host
        # buffer is not written again until this batch has run (ModelRunner.assemble).
        # On the CPU the device is the host: the compiled call takes the array as it is, and
        # ``device_put`` would only add its own dispatch and copy (~0.1 ms for one image).
        if self._host:
            return batch
        return self._jax.device_put(batch)

    def _call(self, batch: Any) -> np.ndarray:
        return np.asarray(self._fn(*self._state, batch))

    def _device(self) -> str:
        device = self._jax.devices()[0]
        return f"{device.platform}:{device.id}"

    @property
    def compilations(self) -> int:
        """Executables compiled so far: one per bucket after warm-up."""
        return int(self._fn._cache_size())  # type: ignore[attr-defined]
