"""The model stage's executor: one compiled TensorFlow function, fed padded batches.

The function has a fixed input signature taken from the model's input: ``[None, H, W, 3] uint8``
for an image model (the first model of a pipeline, fed by the decode stage), ``[None, ...]
float32`` for a model that takes another model's output (a classification head on feature
vectors). It is traced once; batches are padded up to a small set of bucket sizes so that XLA
and TensorFlow's per-shape kernels see only those shapes, all of them warmed before the service
reports ready. For images, normalisation (``preprocess_input``) runs inside the function, on the
accelerator.
"""

from __future__ import annotations

import bisect
import copy
import logging
import time
from typing import Any

import numpy as np
import tensorflow as tf

from .loader import LoadedModel
from .normalize import CAFFE_MEAN_BGR

log = logging.getLogger(__name__)


def tf_normalize(x: Any, mode: str) -> Any:
    """In-graph twin of ``normalize.normalize`` (keras ``preprocess_input``), on float32."""
    if mode == "caffe":
        return tf.reverse(x, axis=[-1]) - tf.constant(CAFFE_MEAN_BGR)
    if mode == "tf":
        return x / 127.5 - 1.0
    return x


def input_spec(loaded: LoadedModel) -> tuple[tuple[int, ...], np.dtype]:
    """What one item fed to ``loaded`` looks like: RGB ``uint8`` pixels for a model whose input
    is ``[H, W, 3]``, else ``float32`` of the model's input shape (feature vectors)."""
    shape = tuple(loaded.model.input_shape[1:])
    if len(shape) == 3 and shape[-1] == 3:
        return (*loaded.input_size, 3), np.dtype(np.uint8)
    if any(d is None for d in shape):
        raise ValueError(f"model input shape {shape} must be fixed (no None past the batch)")
    return tuple(int(d) for d in shape), np.dtype(np.float32)


class ModelRunner:
    """Executes batches on one model. Not thread-safe: each instance is called from one thread
    (:meth:`sibling` makes another instance for another thread).

    Args:
        loaded: the model and its preprocessing mode.
        buckets: batch sizes to pad to (sorted; the largest is the maximum batch size).
        xla: compile the function with XLA (``jit_compile``); worth it on GPUs.
    """

    def __init__(self, loaded: LoadedModel, buckets: list[int], *, xla: bool = False):
        self.loaded = loaded
        self.buckets = sorted(buckets)
        self.max_batch_size = self.buckets[-1]
        self.input_shape, self.input_dtype = input_spec(loaded)
        images = self.input_dtype == np.uint8
        model, mode = loaded.model, loaded.normalize

        def forward(inputs: Any) -> Any:
            x = tf.cast(inputs, tf.float32)
            if images:
                x = tf_normalize(x, mode)
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
        self._buffers: dict[int, np.ndarray] = {}
        self.device = self._device_name()
        self.call_cost_s = 0.0  # measured by warmup()

    @staticmethod
    def _device_name() -> str:
        gpus = tf.config.list_logical_devices("GPU")
        return gpus[0].name if gpus else "/device:CPU:0"

    @property
    def tracing_count(self) -> int:
        """How many times the function was traced; stays 1 after warm-up."""
        return int(self._fn.experimental_get_tracing_count())

    def bucket_for(self, n: int) -> int:
        if n > self.max_batch_size:
            raise ValueError(f"batch of {n} exceeds max batch size {self.max_batch_size}")
        return self.buckets[bisect.bisect_left(self.buckets, n)]

    def sibling(self) -> ModelRunner:
        """Another instance on the same compiled function (traced and warmed once, weights
        shared) with its own input buffers, so that both may run batches at the same time."""
        twin = copy.copy(self)
        twin._buffers = {}
        return twin

    def run(self, images: list[np.ndarray] | np.ndarray) -> tuple[np.ndarray, int, float]:
        """Run one batch. Returns (outputs[n, ...] float32, padded size, compute seconds)."""
        n = len(images)
        size = self.bucket_for(n)
        buf = self._buffers.get(size)
        if buf is None:
            buf = self._buffers[size] = np.zeros((size, *self.input_shape), self.input_dtype)
        if isinstance(images, np.ndarray):
            buf[:n] = images
        else:
            for i, image in enumerate(images):
                buf[i] = image
        if n < size:
            buf[n:] = 0
        start = time.perf_counter()
        out = self._fn(tf.constant(buf)).numpy()
        seconds = time.perf_counter() - start
        return out[:n], size, seconds

    def warmup(self) -> float:
        """Trace once and run every bucket (twice: the first run builds per-shape kernels);
        the second runs' times give :attr:`call_cost_s`."""
        start = time.perf_counter()
        warm: dict[int, float] = {}
        for size in self.buckets:
            for _ in range(2):
                _, _, warm[size] = self.run(np.zeros((size, *self.input_shape), self.input_dtype))
        self.call_cost_s = fixed_cost(warm)
        seconds = time.perf_counter() - start
        log.info(
            "warmed buckets %s in %.1f s (traced %d time); fixed cost per execution %.2f ms",
            self.buckets,
            seconds,
            self.tracing_count,
            1000 * self.call_cost_s,
        )
        return seconds


def fixed_cost(seconds: dict[int, float]) -> float:
    """What one execution costs whatever its size: the intercept of a line through the
    (batch size, seconds) of the buckets, at most the smallest bucket's time, never below 0."""
    sizes = sorted(seconds)
    if len(sizes) < 2:
        return 0.0
    slope, intercept = np.polyfit(sizes, [seconds[s] for s in sizes], 1)
    return float(min(max(intercept, 0.0), seconds[sizes[0]]))
