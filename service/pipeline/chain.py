"""A pipeline's stages after decode, in order, and one item's way through them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from .config import PipelineConfigError
from .info import BatchInfo
from .stages import CpuStage, ModelStage, Stage


class Chain:
    """The model (and cpu) stages of one pipeline; the first is always a model stage.

    Args:
        stages: in order.
    """

    def __init__(self, stages: Sequence[Stage]):
        if not stages or not isinstance(stages[0], ModelStage):
            raise PipelineConfigError("a pipeline's first stage after decode must be a model")
        self.stages = list(stages)
        self.first: ModelStage = stages[0]

    @property
    def models(self) -> list[ModelStage]:
        return [s for s in self.stages if isinstance(s, ModelStage)]

    def submit(self, item: np.ndarray, deadline: float) -> asyncio.Future:
        """``run`` as a future, without a task of its own when the chain is one model stage
        (the common case: the batcher's own future is the answer)."""
        if len(self.stages) == 1:
            batcher = self.first.batcher
            assert batcher is not None, f"stage {self.first.name} is not started"
            return batcher.submit(item, deadline)
        return asyncio.ensure_future(self.run(item, deadline))

    async def run(self, item: np.ndarray, deadline: float) -> tuple[np.ndarray, BatchInfo]:
        """Feed one item through every stage in order; the timing sums over the stages, the
        batch sizes are the first model stage's."""
        first: BatchInfo | None = None
        queue_s = compute_s = 0.0
        for stage in self.stages:
            item, info = await stage.run(item, deadline)
            first = first or info
            queue_s += info.queue_s
            compute_s += info.compute_s
        assert first is not None
        return item, BatchInfo(queue_s, compute_s, first.batch_size, first.padded_size)

    async def check(self) -> None:
        """Each stage must take what the stage before it gives (checked once, at start; a cpu
        stage's output shape comes from running its function once on zeros in a worker)."""
        first = self.first
        if len(first.input_shape) != 3:
            raise PipelineConfigError(
                f"stage {first.name}: the first model must take [H, W, 3] images, "
                f"its input is {list(first.input_shape)}"
            )
        for before, after in zip(self.stages, self.stages[1:], strict=False):
            out = before.output_shape()
            if isinstance(after, CpuStage):
                await after.probe(out)
            elif isinstance(after, ModelStage) and out != tuple(after.input_shape):
                raise PipelineConfigError(
                    f"stage {before.name} gives {list(out)} but stage {after.name} takes "
                    f"{list(after.input_shape)}"
                )

    async def stop(self) -> None:
        for stage in self.stages:
            await stage.stop()
