"""The configured pipelines by name, started and stopped together.

Routes of every protocol find a pipeline with :meth:`Pipelines.get` (``api/deps.py`` wraps it
as ``get_pipeline(request, name)``, answering 404 for an unknown name).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

from ..metrics import Metrics
from ..model.loader import LoadedModel
from ..settings import Settings
from .config import DEFAULT, load_pipelines
from .pipeline import Pipeline

log = logging.getLogger(__name__)


class UnknownPipeline(LookupError):
    """No pipeline of that name is configured."""

    def __init__(self, name: str, known: list[str]):
        super().__init__(f"unknown pipeline {name!r}; configured: {known}")
        self.name = name
        self.known = known


class Pipelines:
    """Every configured pipeline; ``default`` (today's service) is always one of them.

    Args:
        settings: ``pipelines_file`` names the YAML file, ``pipeline`` the one requests get
            when they name none.
        metrics: shared by all pipelines (stage labels are ``pipeline/stage`` outside default).
        model_factory: the default pipeline's model (tests pass a tiny one).
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        model_factory: Callable[[], LoadedModel] | None = None,
    ):
        specs = load_pipelines(settings.pipelines_file)
        if settings.pipeline not in specs:
            raise UnknownPipeline(settings.pipeline, list(specs))
        self.settings = settings
        self.default_name = settings.pipeline
        self._pipelines = {
            name: Pipeline(settings, metrics, model_factory if name == DEFAULT else None, spec)
            for name, spec in specs.items()
        }
        for pipeline in self:
            pipeline.owns_ready = pipeline.name == self.default_name

    def __iter__(self) -> Iterator[Pipeline]:
        return iter(self._pipelines.values())

    def __len__(self) -> int:
        return len(self._pipelines)

    def names(self) -> list[str]:
        return list(self._pipelines)

    @property
    def default(self) -> Pipeline:
        """The pipeline served when a request names none (``SERVE_PIPELINE``)."""
        return self._pipelines[self.default_name]

    def get(self, name: str | None = None) -> Pipeline:
        """The pipeline called ``name`` (None or empty: the default one)."""
        if not name:
            return self.default
        try:
            return self._pipelines[name]
        except KeyError:
            raise UnknownPipeline(name, self.names()) from None

    async def start(self) -> None:
        """Start the default pipeline first (readiness follows it), then the others.

        A configured pipeline that fails to load is reported (its state is ``failed`` and its
        requests answer 503) but does not take the default one down.
        """
        await self.default.start()
        for pipeline in self:
            if pipeline is self.default:
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
        for pipeline in self:
            await pipeline.stop()
