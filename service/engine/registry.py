"""The configured pipelines by name, started and stopped together, in this process.

This is the in-process engine: what the dataplane asks to run an item through a pipeline's
model and cpu stages, to describe a pipeline and to follow its state. In the front-end/
accelerator layout the accelerator process holds one of these and the front ends reach it
through ``engine/``'s client, which answers the same questions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

import numpy as np

from .. import tracing
from ..errors import PipelineNotFound
from ..metrics import Metrics
from ..pipeline.config import DEFAULT, load_pipelines
from ..pipeline.info import BatchInfo, PipelineInfo
from ..settings import Settings
from .pipeline import ModelFactory, Pipeline
from .replies import FutureReply, Reply

log = logging.getLogger(__name__)


class PipelineRegistry:
    """Every configured pipeline; ``default`` (``SERVE_MODEL``) is always one of them.

    Args:
        settings: ``pipelines_file`` names the YAML file; ``pipeline`` the one a request gets
            when it names none (the *fallback*, whose readiness is the service's).
        metrics: shared by all pipelines (stage labels are ``pipeline/stage`` outside default).
        model_factory: the ``default`` pipeline's model (tests pass a tiny one).
    """

    def __init__(
        self, settings: Settings, metrics: Metrics, model_factory: ModelFactory | None = None
    ):
        specs = load_pipelines(settings.pipelines_file)
        if settings.pipeline not in specs:
            raise PipelineNotFound.of(settings.pipeline, list(specs))
        self.settings = settings
        self.metrics = metrics
        self.fallback = settings.pipeline
        self._pipelines = {
            name: Pipeline(settings, metrics, model_factory if name == DEFAULT else None, spec)
            for name, spec in specs.items()
        }
        self._watchers: list[Callable[[PipelineInfo], None]] = []
        for pipeline in self:
            pipeline.on_change = self._changed

    def watch(self, callback: Callable[[PipelineInfo], None]) -> None:
        """Call ``callback`` with a pipeline's new description whenever it changes."""
        self._watchers.append(callback)

    def _changed(self, info: PipelineInfo) -> None:
        for callback in self._watchers:
            callback(info)

    def infos(self) -> dict[str, PipelineInfo]:
        return {name: p.info for name, p in self._pipelines.items()}

    def __iter__(self) -> Iterator[Pipeline]:
        return iter(self._pipelines.values())

    def names(self) -> list[str]:
        return list(self._pipelines)

    def get(self, name: str) -> Pipeline:
        return PipelineNotFound.lookup(self._pipelines, name)

    # -- what the dataplane asks -----------------------------------------------------------

    def info(self, name: str) -> PipelineInfo:
        """The pipeline's description and state; raises ``PipelineNotFound``."""
        return self.get(name).info

    async def run(
        self, name: str, item: np.ndarray, deadline: float
    ) -> tuple[np.ndarray, BatchInfo]:
        """One item through the pipeline's stages after decode (the in-process engine)."""
        future = asyncio.get_running_loop().create_future()
        reply = FutureReply(future, tracing.traceparent())
        tasks = self.submit_many(name, [(item, deadline, reply)])
        try:
            return await future
        except asyncio.CancelledError:  # the request gave up: so do its stages
            for _, task in tasks:
                task.cancel()
            raise

    def submit_many(
        self, name: str, entries: list[tuple[np.ndarray, float, Reply]]
    ) -> list[tuple[Reply, asyncio.Task]]:
        """Items for one pipeline that arrived together (``Pipeline.submit_many``)."""
        return self.get(name).submit_many(entries)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the fallback pipeline first (readiness follows it), then the others.

        A configured pipeline that fails to load is reported (its state is ``failed`` and its
        requests answer 503) but does not take the fallback one down.
        """
        fallback = self._pipelines[self.fallback]
        await fallback.start()
        for pipeline in self:
            if pipeline is fallback:
                continue
            try:
                await pipeline.start()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.error("pipeline %s failed to start; the others keep serving", pipeline.name)

    def drain(self) -> None:
        for pipeline in self:
            pipeline.drain()

    async def stop(self) -> None:
        self.drain()
        for pipeline in self:
            await pipeline.stop()
