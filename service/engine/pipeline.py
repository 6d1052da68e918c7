"""A pipeline's lifecycle: load its models, start its stages, warm them, describe it, stop it.

The default pipeline is decode -> ResNet (``SERVE_MODEL``) -> top-k; others are declared in
``SERVE_PIPELINES_FILE`` (``config.py``), e.g. decode -> ResNet50 feature extractor -> a Keras
classification head -> top-k. Decode and top-k happen where the request is (the dataplane);
this object owns what lies between them, the :class:`~.chain.Chain` of model and cpu stages.
``registry.py`` holds the pipelines by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable

import numpy as np

from ..errors import InvalidInput, NotReady
from ..metrics import Metrics
from ..model.labels import load_labels
from ..model.loader import LoadedModel
from ..pipeline.config import DEFAULT, CpuStageSpec, ModelStageSpec, PipelineSpec, default_spec
from ..pipeline.info import PipelineInfo, StageInfo, configured_info, model_name, stage_label
from ..settings import Settings
from .chain import Chain
from .replies import Reply
from .stages import CpuStage, ModelStage, Stage
from .worker_pool import WorkerPool

log = logging.getLogger(__name__)

ModelFactory = Callable[[], LoadedModel]


def default_model_factory(settings: Settings) -> ModelFactory:
    """The default pipeline's model: ``SERVE_MODEL`` with ``SERVE_WEIGHTS``."""

    def build() -> LoadedModel:
        from ..model.backends import configure, require_gpu
        from ..model.loader import load_model

        configure(settings)
        require_gpu(settings)
        return load_model(settings.model, settings.weights, strict=settings.strict)

    return build


def load_stage_model(spec: ModelStageSpec, settings: Settings) -> LoadedModel:
    """Build the model of one stage of a configured pipeline (blocking)."""
    from ..model.backends import configure, require_gpu
    from ..model.loader import load_keras_file, load_model

    # As the default pipeline's factory does: this may be the first model the process builds
    # (SERVE_PIPELINE names a configured pipeline, which starts first), and the backend's
    # threads, GPU memory and precision are set only before it.
    configure(settings)
    require_gpu(settings)
    if spec.file is not None:
        return load_keras_file(spec.file, spec.normalize or "none")
    assert spec.arch is not None
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


class Pipeline:
    """One named pipeline: its stages after decode and their lifecycle.

    Args:
        settings: service settings.
        metrics: where the stages report.
        model_factory: builds the ``default`` pipeline's model (blocking; run in a thread).
            Tests pass a tiny model.
        spec: the stages; default: decode -> ``SERVE_MODEL`` -> top-k.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        model_factory: ModelFactory | None = None,
        spec: PipelineSpec | None = None,
    ):
        self.settings = settings
        self.metrics = metrics
        self.spec = spec or default_spec()
        self.name = self.spec.name
        self._model_factory = model_factory or default_model_factory(settings)
        self.state = "created"  # created | loading | ready | draining | failed | stopped
        self.error: str | None = None
        self.chain: Chain | None = None
        self.pool: WorkerPool | None = None
        self.on_change: Callable[[PipelineInfo], None] | None = None  # set by the registry
        self._info = self._configured_info()

    # -- naming ----------------------------------------------------------------------------

    def stage_label(self, stage: str) -> str:
        return stage_label(self.name, stage)

    @property
    def model_name(self) -> str:
        return model_name(self.settings, self.name)

    # -- what it is ------------------------------------------------------------------------

    @property
    def info(self) -> PipelineInfo:
        return self._info

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def batcher(self):
        """The first model stage's batcher (None until started)."""
        return self.chain.first.batcher if self.chain else None

    def _set_state(self, state: str, error: str | None = None) -> None:
        self.state, self.error = state, error
        self._publish(dataclasses.replace(self._info, state=state, error=error))

    def _publish(self, info: PipelineInfo) -> None:
        self._info = info
        if self.on_change is not None:
            self.on_change(info)

    def _configured_info(self) -> PipelineInfo:
        return configured_info(self.settings, self.spec)

    def _loaded_info(self, models: list[LoadedModel], chain: Chain) -> PipelineInfo:
        first, last = models[0], models[-1]
        num_classes = last.num_classes
        probabilities = last.outputs_probabilities
        if isinstance(chain.stages[-1], CpuStage):  # its output goes to top-k as scores
            num_classes = int(np.prod(chain.stages[-1].output_shape()))
            probabilities = False
        labels_file = self.spec.labels_file or (
            self.settings.labels_file if self.name == DEFAULT else ""
        )
        stages = [
            StageInfo(self.stage_label("preprocess"), "decode"),
            *(stage.describe() for stage in chain.stages),
            StageInfo(self.stage_label("topk"), "topk"),
        ]
        return PipelineInfo(
            name=self.name,
            model_name=self.model_name,
            state=self.state,
            arch=" -> ".join(m.arch for m in models),
            weights_source=" -> ".join(m.weights_source for m in models),
            random_weights=any(m.random_weights for m in models),
            warnings=tuple(w for m in models for w in m.warnings),
            normalize=first.normalize,
            input_size=first.input_size,
            num_classes=num_classes,
            outputs_probabilities=probabilities,
            labels=load_labels(labels_file, num_classes),
            stages=tuple(stages),
            backend=chain.first.runner.backend,
            device=chain.first.runner.device,
            instances=chain.first.instances,
            warmup_s=sum(m.warmup_s for m in chain.models),
        )

    # -- lifecycle -------------------------------------------------------------------------

    def _load_models(self) -> list[LoadedModel]:
        """Build every model stage's model (blocking)."""
        if self.name == DEFAULT:
            return [self._model_factory()]
        return [load_stage_model(m, self.settings) for m in self.spec.models]

    def _build_chain(self, models: list[LoadedModel]) -> Chain:
        """The model stages with the spec's cpu stages between them, in order."""
        built = iter(models)
        stages: list[Stage] = []
        for step in self.spec.chain:
            label = self.stage_label(step.name)
            if isinstance(step, CpuStageSpec):
                if self.pool is None:
                    self.pool = WorkerPool(
                        self.settings.workers,
                        on_restart=self.metrics.worker_restarts.inc,
                        niceness=self.settings.preprocess_nice,
                    )
                stages.append(CpuStage(label, step.function, self.pool, self.metrics))
            else:
                stages.append(ModelStage(label, next(built)))
        return Chain(stages)

    async def start(self) -> None:
        """Load the models, start the stages, warm every bucket; then mark ready."""
        s = self.settings
        self._set_state("loading")
        chain: Chain | None = None
        pool_started: asyncio.Task | None = None
        try:
            models = await asyncio.to_thread(self._load_models)
            chain = self._build_chain(models)
            pool_started = (
                asyncio.create_task(asyncio.to_thread(self.pool.start)) if self.pool else None
            )
            for stage in chain.models:
                await stage.start(s, self.metrics)
            if pool_started is not None:
                await pool_started
            await chain.check()
            self._publish(self._loaded_info(models, chain))
        except Exception as exc:
            self._set_state("failed", f"{type(exc).__name__}: {exc}")
            log.exception("pipeline %s failed to load", self.name)
            # What started goes: runner threads, batchers, workers, models (a GPU's memory).
            if chain is not None:
                with contextlib.suppress(Exception):
                    await chain.stop()
            if self.pool is not None:
                with contextlib.suppress(Exception):
                    if pool_started is not None:
                        await pool_started  # its workers may still be starting
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.pool.close)
            raise
        self.chain = chain
        self._set_state("ready")
        log.info(
            "ready: pipeline %s (%s), weights %s, buckets %s, %d model instances, device %s",
            self.name,
            self._info.arch,
            self._info.weights_source,
            s.batch_buckets,
            self._info.instances,
            self._info.device,
        )

    def drain(self) -> None:
        """Stop admitting work; what is in flight finishes."""
        if self.state == "ready":
            self._set_state("draining")

    async def stop(self) -> None:
        self.drain()
        self._set_state("stopped", self.error)
        if self.chain is not None:
            await self.chain.stop()
        if self.pool is not None:
            await asyncio.to_thread(self.pool.close)

    def submit_many(
        self, entries: list[tuple[np.ndarray, float, Reply]]
    ) -> list[tuple[Reply, asyncio.Task]]:
        """Items that arrived together (see ``Chain.submit_many``); raises ``NotReady``. An
        item that is not what the first model takes is answered ``InvalidInput`` on its own,
        and the others run."""
        if self.chain is None or self.state == "stopped":  # stopped: its batchers run no more
            raise NotReady.of(self.state)
        runner = self.chain.first.runner
        shape, dtype = tuple(runner.input_shape), runner.input_dtype
        fit = []
        for entry in entries:
            item = entry[0]
            if item.shape == shape and item.dtype == dtype:
                fit.append(entry)
            else:
                entry[2].set_exception(
                    InvalidInput(
                        f"pipeline {self.name!r} takes {list(shape)} {dtype}, got "
                        f"{list(item.shape)} {item.dtype}"
                    )
                )
        return self.chain.submit_many(fit)
