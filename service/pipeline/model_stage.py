"""A model stage: one model, its compiled runner and its own dynamic batcher.

A pipeline chains one or more of these (a ResNet feature extractor, then a classification
head); each batches independently, so while the head runs batch ``n`` the backbone already runs
batch ``n + 1``. Building the model imports TensorFlow: call :func:`load_stage_model` in a
thread of the server process, never in a preprocessing worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..metrics import Metrics
from ..model.loader import LoadedModel
from ..model.threads import instance_count
from ..settings import Settings
from .batcher import BatchInfo, DynamicBatcher
from .config import ModelStageSpec

log = logging.getLogger(__name__)


def load_stage_model(spec: ModelStageSpec, settings: Settings) -> LoadedModel:
    """Build the model of one stage of a configured pipeline (blocking)."""
    from ..model.loader import load_model

    if spec.arch is not None:
        loaded = load_model(
            spec.arch,
            spec.weights,
            strict=settings.strict,
            include_top=spec.include_top,
            pooling=spec.pooling,
        )
        if spec.normalize is not None:
            loaded.normalize = spec.normalize
        return loaded
    return load_keras_file(str(spec.file), spec.normalize or "none")


def load_keras_file(path: str, normalize: Any = "none") -> LoadedModel:
    """A whole Keras model from a ``.keras`` file (a classification head, a fine-tuned model)."""
    import keras

    model = keras.saving.load_model(path, compile=False)
    shape = model.input_shape
    size = (int(shape[1]), int(shape[2])) if len(shape) == 4 else (0, 0)
    last = model.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    return LoadedModel(
        model=model,
        arch="keras-file",
        normalize=normalize,
        input_size=size,
        num_classes=int(model.output_shape[-1]),
        weights_source=path,
        random_weights=False,
        outputs_probabilities=activation == "softmax",
    )


@dataclass
class ModelStage:
    """One model stage of a pipeline.

    Args:
        name: the stage's metrics label (``serve_queue_depth{stage=...}``).
        loaded: its model.
    """

    name: str
    loaded: LoadedModel
    runner: Any = None  # ModelRunner, built in start()
    batcher: DynamicBatcher | None = None
    warmup_s: float = 0.0
    instances: int = 1  # runner instances (``SERVE_MODEL_INSTANCES`` resolved), set in start()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.runner.input_shape if self.runner is not None else ()

    async def start(self, settings: Settings, metrics: Metrics) -> None:
        """Trace and warm every bucket (in a thread), then start the batcher."""
        from .runner import ModelRunner  # imports TensorFlow

        runner = ModelRunner(self.loaded, settings.batch_buckets, xla=settings.xla)
        self.warmup_s = await asyncio.to_thread(runner.warmup)
        self.runner = runner
        gpu = "GPU" in runner.device
        self.instances = instance_count(settings.model_instances, gpu=gpu, cpus=settings.cpu_count)
        exact = settings.batch_padding == "exact" or (settings.batch_padding == "auto" and not gpu)
        self.batcher = DynamicBatcher(
            self.name,
            [runner.run] + [runner.sibling().run for _ in range(self.instances - 1)],
            max_batch_size=runner.max_batch_size,
            max_delay_s=settings.max_batch_delay_ms / 1000.0,
            max_queue=settings.max_queue_images,
            metrics=metrics,
            exact_sizes=runner.buckets if exact else None,
            regroup_s=settings.batch_regroup_ms / 1000.0,
        )
        self.batcher.start()

    def submit(self, item: np.ndarray, deadline: float) -> asyncio.Future:
        """Queue one item; resolves to ``(output_row, BatchInfo)``."""
        assert self.batcher is not None, f"stage {self.name} is not started"
        return self.batcher.submit(item, deadline)

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()


@dataclass
class CpuStage:
    """A ``cpu`` stage between model stages: its function, applied to one item at a time in the
    preprocessing process pool (no batcher).

    Args:
        name: the stage's metrics label.
        function: ``package.module:function``.
        pool: the pipeline's process pool.
        metrics: where it reports (duration, queue depth, busy fraction).
        workers: the pool's size (for the busy fraction).
    """

    name: str
    function: str
    pool: Any
    metrics: Metrics
    workers: int = 1
    output_shape: tuple[int, ...] = ()
    pending: int = 0

    def __post_init__(self) -> None:
        self._busy = self.metrics.stage_work_window(self.name, self.workers)
        self.metrics.queue_depth.labels(self.name).set_function(lambda: float(self.pending))

    async def probe(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Run the function once on zeros in a worker (it imports there); its output shape."""
        from .config import PipelineConfigError

        try:
            out, _ = await self.pool.apply(self.function, np.zeros(input_shape, np.float32))
        except Exception as exc:
            raise PipelineConfigError(
                f"stage {self.name}: function {self.function!r} failed on an input of shape "
                f"{list(input_shape)}: {exc}"
            ) from None
        self.output_shape = tuple(int(d) for d in out.shape)
        return self.output_shape

    async def submit(self, item: np.ndarray, deadline: float) -> tuple[np.ndarray, None]:
        self.pending += 1
        try:
            out, seconds = await self.pool.apply(self.function, item)
        finally:
            self.pending -= 1
        self.metrics.stage_seconds.labels(self.name).observe(seconds)
        self._busy.add(seconds)
        return out, None


async def run_chain(
    stages: list[ModelStage | CpuStage], item: np.ndarray, deadline: float
) -> tuple[np.ndarray, BatchInfo]:
    """Feed one item through the model (and cpu) stages in order; the timing sums over the
    model stages and the batch sizes are the first model stage's."""
    first: BatchInfo | None = None
    queue_s = compute_s = 0.0
    for stage in stages:
        item, info = await stage.submit(item, deadline)
        if info is None:  # a cpu stage
            continue
        first = first or info
        queue_s += info.queue_s
        compute_s += info.compute_s
    assert first is not None
    return item, BatchInfo(queue_s, compute_s, first.batch_size, first.padded_size)


ModelFactory = Callable[[], LoadedModel]
