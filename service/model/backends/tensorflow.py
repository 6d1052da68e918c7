"""TensorFlow: a ``tf.function`` with a fixed input signature (traced once for every bucket),
optionally XLA-compiled; GPU memory growth; thread pools sized for the runner instances."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tensorflow as tf

from ...cpus import available_cpus
from ..precision import precision_policy
from ..runner import ModelRunner, graph_normalize
from ..threads import ThreadPlan, plan_threads

log = logging.getLogger(__name__)


def configure(
    *,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    mixed_precision: str = "off",
    model_instances: int = 1,
    cpus: int = 0,
) -> ThreadPlan:
    """Thread pools, GPU memory growth and the precision policy (the ``SERVE_*`` settings of
    the same names); call before any model is built.

    Returns the plan with the automatic values resolved (``threads.plan_threads``): with
    ``model_instances`` 0 or above 1 on a CPU, the thread pools are sized for several instances.
    """
    import keras

    gpus = tf.config.list_physical_devices("GPU")
    plan = plan_threads(
        instances=model_instances,
        intra_op_threads=intra_op_threads,
        inter_op_threads=inter_op_threads,
        gpu=bool(gpus),
        cpus=cpus or available_cpus(),
    )
    try:
        if plan.intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(plan.intra_op_threads)
        if plan.inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(plan.inter_op_threads)
    except RuntimeError:  # already initialised (tests build several models in one process)
        log.debug("TensorFlow threads already configured")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            log.debug("memory growth already set for %s", gpu.name)
    keras.mixed_precision.set_global_policy(precision_policy(mixed_precision))
    return plan


class TensorFlowRunner(ModelRunner):
    backend = "tensorflow"

    def _compile(self, xla: bool) -> None:
        model, mode, images = self.loaded.model, self.loaded.normalize, self.images

        def forward(inputs: Any) -> Any:
            x = tf.cast(inputs, tf.float32)
            if images:
                x = graph_normalize(x, mode)
            out = model(x, training=False)
            return tf.cast(out, tf.float32)

        name = "pixels" if images else "features"
        self._fn = tf.function(
            forward,
            input_signature=[
                tf.TensorSpec([None, *self.input_shape], tf.as_dtype(self.input_dtype), name=name)
            ],
            jit_compile=xla,
            reduce_retracing=False,
        )
        # Called directly, the one concrete function skips the tf.function's argument
        # matching, which costs about as much as a small model's whole call.
        self._concrete = self._fn.get_concrete_function()
        self._flat = _flat_call(self._concrete)

    def _transfer(self, batch: np.ndarray) -> Any:
        # The input buffer as a tensor without a copy (tf.constant copies the whole batch).
        # The buffer is 64-byte aligned, as TensorFlow needs, and is not written again before
        # this batch has run (ModelRunner.assemble).
        return tf.experimental.dlpack.from_dlpack(batch.__dlpack__())

    def _call(self, batch: Any) -> np.ndarray:
        return self._flat(batch).numpy()

    def _device(self) -> str:
        gpus = tf.config.list_logical_devices("GPU")
        return gpus[0].name if gpus else "/device:CPU:0"

    @property
    def compilations(self) -> int:
        """Traces of the function: one signature with a free batch dimension, so 1."""
        return int(self._fn.experimental_get_tracing_count())


def _flat_call(concrete: Any) -> Any:
    """``concrete(x)`` as the call that path ends in when no gradient tape watches (never,
    here): the concrete function's inference function on the input and its captured variables.

    The public call binds the argument against the structured signature, looks for tapes and
    opens a profiler trace first: ~50 of the ~120 µs of the stand-in model's whole call at
    batch 1 on this machine. The inference function is TensorFlow's private API: where it is
    missing or its signature is not one input plus the captures, the public call is used.
    """
    inference: Any = getattr(concrete, "_inference_function", None)
    captured = tuple(getattr(concrete, "captured_inputs", ()))
    try:
        signature = inference.cached_definition.signature
        inputs, outputs = len(signature.input_arg), len(signature.output_arg)
        call_flat = inference.call_flat
    except AttributeError:
        inputs = outputs = -1
    if inputs != 1 + len(captured) or outputs != 1:
        log.info("TensorFlow: the concrete function's public call (no flat call here)")
        return concrete

    def call(batch: Any) -> Any:
        return call_flat(batch, *captured)[0]

    return call
