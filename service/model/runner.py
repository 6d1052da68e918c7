"""The model stage's executor: one compiled function of the model, fed padded batches.

The function's input is fixed by the model's: ``[N, H, W, 3] uint8`` for an image model (the
first model of a pipeline, fed by the decode stage), ``[N, ...] float32`` for a model that
takes another model's output (a classification head on feature vectors). Batches are padded up
to a small set of bucket sizes so that the compiled code sees only those shapes, all of them
compiled and warmed before the service reports ready. For images, normalisation
(``preprocess_input``) runs inside the function, on the accelerator.

What compiles the function is the Keras backend's business (``backends/``: ``tf.function`` for
TensorFlow, ``jax.jit`` over the model's stateless call for JAX); the buckets, the buffers, the
instances and the warm-up are the same for every backend and live here.
"""

from __future__ import annotations

import abc
import bisect
import copy
import logging
import threading
import time
from typing import Any, NamedTuple

import numpy as np

from .loader import LoadedModel
from .normalize import CAFFE_MEAN_BGR

log = logging.getLogger(__name__)

# The alignment at which TensorFlow's DLPack import and JAX's CPU client use a host buffer in
# place instead of copying it. The front ends' arenas start every slot on it (``LINE`` in
# wire/arena.py, which the front end imports without this module).
ALIGN = 64


def graph_normalize(x: Any, mode: str) -> Any:
    """In-graph twin of ``normalize.normalize`` (keras ``preprocess_input``) on float32, in
    ``keras.ops``: the same code inside ``tf.function`` and ``jax.jit``."""
    from keras import ops

    if mode == "caffe":
        return ops.flip(x, axis=-1) - ops.convert_to_tensor(CAFFE_MEAN_BGR)
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


class Prepared(NamedTuple):
    """An assembled batch: the padded input (on the device, once transferred)."""

    batch: Any
    n: int  # items, before padding
    size: int  # the bucket
    buffer: np.ndarray | None = None  # the host buffer it holds until run (None: in place)


class ModelRunner(abc.ABC):
    """Executes batches on one model. Not thread-safe: each instance is called from one thread
    (:meth:`sibling` makes another instance for another thread).

    Args:
        loaded: the model and its preprocessing mode.
        buckets: batch sizes to pad to (sorted; the largest is the maximum batch size).
        xla: compile with XLA where the backend makes it optional (TensorFlow's
            ``jit_compile``); JAX always compiles with XLA.
    """

    backend = ""

    def __init__(self, loaded: LoadedModel, buckets: list[int], *, xla: bool = False):
        self.loaded = loaded
        self.buckets = sorted(buckets)
        self.max_batch_size = self.buckets[-1]
        self.input_shape, self.input_dtype = input_spec(loaded)
        self.images = self.input_dtype == np.uint8
        self._buffers: dict[int, list[np.ndarray]] = {}  # bucket -> its free input buffers
        self._lock = threading.Lock()  # assembled in two threads: the runner's, the assembler's
        self.call_cost_s = 0.0  # measured by warmup()
        self._compile(xla)
        self.device = self._device()

    # -- the backend's part ----------------------------------------------------------------

    @abc.abstractmethod
    def _compile(self, xla: bool) -> None:
        """Build the compiled function (compiled per shape at its first call)."""

    @abc.abstractmethod
    def _call(self, batch: np.ndarray) -> np.ndarray:
        """One padded batch through the compiled function: float32 outputs, on the host."""

    @abc.abstractmethod
    def _device(self) -> str:
        """Where the function runs, e.g. ``/device:GPU:0`` or ``cuda:0``."""

    @property
    @abc.abstractmethod
    def compilations(self) -> int:
        """How many times the function was traced or compiled so far: warm-up compiles what
        it needs (every bucket, or one trace for all), and serving adds nothing."""

    @property
    def accelerator(self) -> bool:
        """Whether the function runs on a GPU (or another accelerator), not the CPU."""
        return "cpu" not in self.device.lower()

    # -- batches ---------------------------------------------------------------------------

    def bucket_for(self, n: int) -> int:
        if n > self.max_batch_size:
            raise ValueError(f"batch of {n} exceeds max batch size {self.max_batch_size}")
        return self.buckets[bisect.bisect_left(self.buckets, n)]

    def sibling(self) -> ModelRunner:
        """Another instance on the same compiled function (compiled and warmed once, weights
        shared) with its own input buffers, so that both may run batches at the same time."""
        twin = copy.copy(self)
        twin._buffers = {}
        twin._lock = threading.Lock()
        return twin

    def assemble(self, images: list[np.ndarray] | np.ndarray) -> Prepared:
        """Copy a batch into an input buffer of its bucket, padded, and hand it to the device
        (:meth:`_transfer`). The buffer is the batch's until :meth:`execute` has run it (the
        call may read it from the host: TensorFlow's, through DLPack), then free for the next
        one: so the next batch is assembled while the one before still runs
        (``DynamicBatcher``'s ``ahead``), whatever order the two threads that assemble (the
        runner's, the assembler's) come in. Each bucket has as many buffers as were ever in
        use at once: two or three.

        A lone item that is already laid out as the model reads it (the front end's
        shared-memory slot: the input's shape and type, contiguous, writable, 64-byte
        aligned) goes to the device as it is, without the copy: its slot stays the item's
        until it is answered, after the batch has run."""
        n = len(images)
        size = self.bucket_for(n)
        if size == 1 and not isinstance(images, np.ndarray) and self._in_place(images[0]):
            return Prepared(self._transfer(images[0][np.newaxis]), 1, 1)
        with self._lock:
            free = self._buffers.setdefault(size, [])
            buf = free.pop() if free else None
        if buf is None:
            buf = aligned_zeros((size, *self.input_shape), self.input_dtype)
        if isinstance(images, np.ndarray):
            buf[:n] = images
        else:  # the items are views into the front ends' shared memory: one copy each
            # (row copies cost ~3.5 µs less than np.stack at 1-2 items, the same at 32:
            # python -m loadtest.bench.engine_parts)
            row = self.input_shape
            for i, image in enumerate(images):
                if image.shape != row:  # the assignment alone would broadcast it
                    raise ValueError(f"an item of shape {image.shape} for input {row}")
                buf[i] = image
        if n < size:
            buf[n:] = 0
        return Prepared(self._transfer(buf), n, size, buf)

    def _in_place(self, item: np.ndarray) -> bool:
        return (
            item.shape == self.input_shape
            and item.dtype == self.input_dtype
            and item.flags.c_contiguous
            and item.flags.writeable  # DLPack exports no read-only buffer
            and item.ctypes.data % ALIGN == 0
        )

    def execute(self, prepared: Prepared) -> tuple[np.ndarray, int, float]:
        """Run an assembled batch: (outputs[n, ...] float32, padded size, compute seconds)."""
        start = time.perf_counter()
        try:
            out = self._call(prepared.batch)
        finally:
            if prepared.buffer is not None:  # read: free for the next batch of its bucket
                with self._lock:
                    self._buffers[prepared.size].append(prepared.buffer)
        seconds = time.perf_counter() - start
        return out[: prepared.n], prepared.size, seconds

    def run(self, images: list[np.ndarray] | np.ndarray) -> tuple[np.ndarray, int, float, float]:
        """Assemble and run one batch: (outputs, padded size, compute s, assembly s)."""
        start = time.perf_counter()
        prepared = self.assemble(images)
        assembly_s = time.perf_counter() - start
        out, size, seconds = self.execute(prepared)
        return out, size, seconds, assembly_s

    def _transfer(self, batch: np.ndarray) -> Any:
        """Start moving an assembled batch to the device (default: the call takes it)."""
        return batch

    def warmup(self) -> float:
        """Compile and run every bucket (twice: the first run builds per-shape kernels); the
        second runs' times give :attr:`call_cost_s`."""
        start = time.perf_counter()
        warm: dict[int, float] = {}
        for size in self.buckets:
            for _ in range(2):
                _, _, warm[size], _ = self.run(
                    np.zeros((size, *self.input_shape), self.input_dtype)
                )
        self.call_cost_s = fixed_cost(warm)
        seconds = time.perf_counter() - start
        log.info(
            "%s: warmed buckets %s in %.1f s (%d compilations) on %s; fixed cost per "
            "execution %.2f ms",
            self.backend,
            self.buckets,
            seconds,
            self.compilations,
            self.device,
            1000 * self.call_cost_s,
        )
        return seconds


def aligned_zeros(shape: tuple[int, ...], dtype: np.dtype, align: int = ALIGN) -> np.ndarray:
    """Zeros on a ``align``-byte boundary: JAX's CPU client then uses the buffer in place
    instead of copying it at every batch (measured: 0.05 ms against 1.9 ms for 32 images)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(nbytes + align, np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def fixed_cost(seconds: dict[int, float]) -> float:
    """What one execution costs whatever its size: the intercept of a line through the
    (batch size, seconds) of the buckets, at most the smallest bucket's time, never below 0."""
    sizes = sorted(seconds)
    if len(sizes) < 2:
        return 0.0
    slope, intercept = np.polyfit(sizes, [seconds[s] for s in sizes], 1)
    return float(min(max(intercept, 0.0), seconds[sizes[0]]))
