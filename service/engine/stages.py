"""The stages after decode: model stages (a batcher and its runners) and cpu stages.

Every stage implements :class:`Stage`: ``run(item, deadline)`` takes one item (an image's
pixels, or the previous stage's output row) and returns its output row and what happened to it
(:class:`~.info.BatchInfo`). A pipeline chains them (``chain.py``): a ResNet feature extractor,
then a classification head; each model stage batches independently, so while the head runs
batch ``n`` the backbone already runs batch ``n + 1``.

To add a kind of stage: implement ``Stage`` here, give it a ``kind`` in ``config.py``, and build
it in ``Pipeline._build_chain``.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from typing import Any

import numpy as np

from ..metrics import Metrics
from ..model.loader import LoadedModel
from ..model.threads import instance_count
from ..pipeline.config import PipelineConfigError
from ..pipeline.info import BatchInfo, StageInfo
from ..settings import Settings
from .batcher import DynamicBatcher
from .worker_pool import WorkerPool

log = logging.getLogger(__name__)


class Stage(abc.ABC):
    """One stage of a pipeline after decode."""

    name: str  # the stage's metrics label (serve_queue_depth{stage=...})
    kind: str  # model | cpu

    @abc.abstractmethod
    async def run(
        self, item: np.ndarray, deadline: float, trace: str | None = None
    ) -> tuple[np.ndarray, BatchInfo]:
        """One item through this stage: its output row and its timing. ``trace``: its
        request's traceparent, which a model stage's batch span links to."""

    @abc.abstractmethod
    def output_shape(self) -> tuple[int, ...]:
        """The shape of one item's output (known once the stage has started)."""

    @abc.abstractmethod
    def describe(self) -> StageInfo:
        """The stage as the API shows it."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop taking items; what is queued fails."""


class ModelStage(Stage):
    """One model, its compiled runner(s) and its own dynamic batcher.

    Args:
        name: the stage's metrics label.
        loaded: its model.
    """

    kind = "model"

    def __init__(self, name: str, loaded: LoadedModel):
        self.name = name
        self.loaded = loaded
        self.runner: Any = None  # ModelRunner, built in start()
        self.batcher: DynamicBatcher | None = None
        self.warmup_s = 0.0
        self.instances = 1  # runner instances (SERVE_MODEL_INSTANCES resolved), set in start()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.runner.input_shape if self.runner is not None else ()

    def output_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.loaded.model.output_shape[1:])

    async def start(self, settings: Settings, metrics: Metrics) -> None:
        """Trace and warm every bucket (in a thread), then start the batcher."""
        from ..model.backends import make_runner  # imports the backend

        runner = make_runner(self.loaded, settings.batch_buckets, xla=settings.xla)
        self.warmup_s = await asyncio.to_thread(runner.warmup)
        self.runner = runner
        gpu = runner.accelerator
        self.instances = instance_count(settings.model_instances, gpu=gpu, cpus=settings.cpu_count)
        exact = settings.batch_padding == "exact" or (settings.batch_padding == "auto" and not gpu)
        runners = [runner] + [runner.sibling() for _ in range(self.instances - 1)]
        self.batcher = DynamicBatcher(
            self.name,
            [r.run for r in runners],
            max_batch_size=runner.max_batch_size,
            max_delay_s=settings.max_batch_delay_ms / 1000.0,
            max_queue=settings.max_queue_images,
            metrics=metrics,
            exact_sizes=runner.buckets if exact else None,
            regroup_s=settings.batch_regroup_ms / 1000.0,
            call_cost_s=runner.call_cost_s,
            inline_s=settings.inline_batch_ms / 1000.0,
            # On an accelerator, a full batch is assembled and sent while the one before runs.
            # On a CPU the copy would only take cores from the model: the runner does it.
            ahead=[(r.assemble, r.execute) for r in runners] if gpu else None,
        )
        self.batcher.start()

    async def run(
        self, item: np.ndarray, deadline: float, trace: str | None = None
    ) -> tuple[np.ndarray, BatchInfo]:
        assert self.batcher is not None, f"stage {self.name} is not started"
        return await self.batcher.submit(item, deadline, trace)

    def describe(self) -> StageInfo:
        runner = self.runner
        return StageInfo(
            name=self.name,
            kind=self.kind,
            model=self.loaded.arch,
            weights=self.loaded.weights_source,
            input_shape=tuple(runner.input_shape) if runner else None,
            input_dtype=str(runner.input_dtype) if runner else None,
        )

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()


class CpuStage(Stage):
    """A ``cpu`` stage between model stages: its function, applied to one item at a time in the
    pipeline's worker pool (no batcher).

    Args:
        name: the stage's metrics label.
        function: ``package.module:function``.
        pool: the pipeline's worker pool.
        metrics: where it reports (duration, queue depth, busy fraction).
    """

    kind = "cpu"

    def __init__(self, name: str, function: str, pool: WorkerPool, metrics: Metrics):
        self.name = name
        self.function = function
        self.pool = pool
        self.metrics = metrics
        self.pending = 0
        self._output_shape: tuple[int, ...] = ()
        self._busy = metrics.stage_work_window(name, pool.workers)
        metrics.watch(metrics.queue_depth.labels(name), lambda: float(self.pending))

    def output_shape(self) -> tuple[int, ...]:
        return self._output_shape

    async def probe(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Run the function once on zeros in a worker (it imports there); its output shape."""
        try:
            out, _ = await self.pool.apply(self.function, np.zeros(input_shape, np.float32))
        except Exception as exc:
            raise PipelineConfigError(
                f"stage {self.name}: function {self.function!r} failed on an input of shape "
                f"{list(input_shape)}: {exc}"
            ) from None
        self._output_shape = tuple(int(d) for d in out.shape)
        return self._output_shape

    async def run(
        self, item: np.ndarray, deadline: float, trace: str | None = None
    ) -> tuple[np.ndarray, BatchInfo]:
        self.pending += 1
        try:
            out, seconds = await self.pool.apply(self.function, item)
        finally:
            self.pending -= 1
        self.metrics.stage_seconds.labels(self.name).observe(seconds)
        self._busy.add(seconds)
        # Not a model execution: nothing to add to the request's queue and inference times.
        return out, BatchInfo(0.0, 0.0, 1, 1)

    def describe(self) -> StageInfo:
        return StageInfo(name=self.name, kind=self.kind, function=self.function)
