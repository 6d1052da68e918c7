"""A pipeline's stages after decode, in order, and one item's way through them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial

import numpy as np

from ..errors import ShuttingDown
from ..pipeline.config import PipelineConfigError
from ..pipeline.info import BatchInfo
from .replies import Reply
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

    def submit_many(
        self, entries: list[tuple[np.ndarray, float, Reply]]
    ) -> list[tuple[Reply, asyncio.Task]]:
        """Items that arrived together, each ``(item, deadline, reply)``: straight into the
        first stage's batcher when it is the only stage; else one task per item through the
        stages (returned with its reply, so that a cancelled request can cancel its task)."""
        if len(self.stages) == 1:
            batcher = self.first.batcher
            assert batcher is not None, f"stage {self.first.name} is not started"
            batcher.submit_many(entries)
            return []
        tasks = []
        for item, deadline, reply in entries:
            # A copy: the item's slot is the front end's again once the task answers, which a
            # cancelled task does at once, whatever its first stage is still doing.
            task = asyncio.ensure_future(self.run(item.copy(), deadline, reply.trace))
            task.add_done_callback(partial(_settle, reply))
            tasks.append((reply, task))
        return tasks

    async def run(
        self, item: np.ndarray, deadline: float, trace: str | None = None
    ) -> tuple[np.ndarray, BatchInfo]:
        """Feed one item through every stage in order; the timing sums over the stages, the
        batch sizes are the first model stage's. ``trace``: the request's traceparent, for
        each model stage's batch span."""
        first: BatchInfo | None = None
        queue_s = compute_s = 0.0
        for stage in self.stages:
            item, info = await stage.run(item, deadline, trace)
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
        last = self.stages[-1]
        if len(out := last.output_shape()) != 1:  # top-k ranks one score per class
            raise PipelineConfigError(
                f"the last stage, {last.name}, gives {list(out)} per image, where top-k needs "
                "one score per class: end with a classifier, or give a backbone "
                "'pooling: avg' (or max) and a head"
            )

    async def stop(self) -> None:
        for stage in self.stages:
            await stage.stop()


def _settle(reply: Reply, task: asyncio.Task) -> None:
    if task.cancelled():
        reply.set_exception(ShuttingDown("the item was cancelled", "cancelled"))
    elif (exc := task.exception()) is not None:
        reply.set_exception(exc)
    else:
        reply.set_result(task.result())
