"""A pipeline: decode/resize (process pool) -> model stage(s) (batcher + runner each) -> top-k.

The default pipeline is decode -> ResNet (``SERVE_MODEL``) -> top-k; others are declared in
``SERVE_PIPELINES_FILE`` (``config.py``), e.g. decode -> ResNet50 feature extractor -> a Keras
classification head -> top-k. ``Pipeline`` owns its stages and the admission bound; request
handlers only validate input and call :meth:`Pipeline.classify` (encoded images) or
:meth:`Pipeline.infer_pixels` (already decoded ``uint8`` pixels). ``registry.py`` holds them by
name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..metrics import Metrics
from ..model.labels import load_labels
from ..model.loader import LoadedModel
from ..settings import Settings
from .batcher import BatchInfo, DynamicBatcher
from .config import DEFAULT, CpuStageSpec, PipelineSpec, default_spec
from .model_stage import CpuStage, ModelStage, load_stage_model, run_chain
from .pool import PreprocessPool
from .postprocess import Prediction, probabilities, top_k
from .preprocess import ImageError, PreprocessConfig

log = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """Admitting this request would exceed ``SERVE_MAX_QUEUE_IMAGES``; retry later."""


class NotReady(RuntimeError):
    """The model is still loading or warming up, or the service is draining."""


class InvalidImage(ValueError):
    """Image ``index`` of the request is not usable."""

    def __init__(self, index: int, error: ImageError):
        super().__init__(f"image {index}: {error.message}")
        self.index = index
        self.code = error.code
        self.message = f"image {index}: {error.message}"


@dataclass
class Timing:
    """Per-request timing in milliseconds (maxima over the request's images)."""

    preprocess_ms: float = 0.0
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    total_ms: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "preprocess_ms": round(self.preprocess_ms, 3),
            "queue_ms": round(self.queue_ms, 3),
            "inference_ms": round(self.inference_ms, 3),
            "total_ms": round(self.total_ms, 3),
            "batch_sizes": self.batch_sizes,
        }


@dataclass
class ClassifyResult:
    predictions: list[list[Prediction]]
    probabilities: np.ndarray  # (n, classes) float32
    timing: Timing


def default_model_factory(settings: Settings) -> Callable[[], LoadedModel]:
    def build() -> LoadedModel:
        from ..model.loader import configure_tensorflow, load_model

        configure_tensorflow(
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            mixed_precision=settings.mixed_precision,
            model_instances=settings.model_instances,
            cpus=settings.cpu_count,
        )
        return load_model(settings.model, settings.weights, strict=settings.strict)

    return build


class Pipeline:
    """The stages of one named classification pipeline and their lifecycle.

    Args:
        settings: service settings.
        metrics: where the stages report.
        model_factory: builds the default pipeline's model (blocking; run in a thread). Tests
            pass a tiny model.
        spec: the stages; default: today's decode -> ``SERVE_MODEL`` -> top-k.

    ``loaded`` describes the pipeline as one model (input of the first model stage, classes and
    output of the last); ``runner`` and ``batcher`` are those of the first model stage.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        model_factory: Callable[[], LoadedModel] | None = None,
        spec: PipelineSpec | None = None,
    ):
        self.settings = settings
        self.metrics = metrics
        self.spec = spec or default_spec()
        self.name = self.spec.name
        self._model_factory = model_factory or default_model_factory(settings)
        self.state = "created"  # created | loading | ready | draining | failed | stopped
        self.error: str | None = None
        self.loaded: LoadedModel | None = None
        self.stages: list[ModelStage] = []
        self.chain: list[ModelStage | CpuStage] = []  # model and cpu stages, in order
        self.runner: Any = None
        self.batcher: DynamicBatcher | None = None
        self.pool: PreprocessPool | None = None
        self.labels: tuple[str, ...] = ()
        self.warmup_s = 0.0
        self._in_flight = 0
        self._primary = self.name == DEFAULT
        self.owns_ready = self._primary  # sets serve_ready (the registry picks the served one)
        self._preprocess_busy = metrics.stage_work_window(
            self.stage_label("preprocess"), settings.workers
        )
        self._topk_busy = metrics.stage_work_window(self.stage_label("topk"))

    def stage_label(self, stage: str) -> str:
        """Metrics label of a stage: its name in the default pipeline, else ``pipeline/stage``."""
        return stage if self._primary else f"{self.name}/{stage}"

    def _load_models(self) -> list[tuple[str, LoadedModel]]:
        """Build every model stage's model (blocking)."""
        if self._primary:
            return [("model", self._model_factory())]
        return [(m.name, load_stage_model(m, self.settings)) for m in self.spec.models]

    def _build_chain(self) -> list[ModelStage | CpuStage]:
        """The model stages with the cpu stages of the spec between them, in order."""
        models = iter(self.stages)
        chain: list[ModelStage | CpuStage] = []
        for step in self.spec.chain:
            if isinstance(step, CpuStageSpec):
                label = self.stage_label(step.name)
                chain.append(
                    CpuStage(label, step.function, self.pool, self.metrics, self.settings.workers)
                )
            else:
                chain.append(next(models))
        return chain

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    async def start(self) -> None:
        """Load the models, start the worker pool, warm every bucket; then mark ready."""
        s = self.settings
        self.state = "loading"
        try:
            models = await asyncio.to_thread(self._load_models)
            self.stages = [ModelStage(self.stage_label(n), m) for n, m in models]
            first = models[0][1]
            self.loaded = _composite(first, [m for _, m in models])
            cfg = PreprocessConfig(
                size=first.input_size,
                resize=s.resize,
                crop_fraction=s.crop_fraction,
                max_pixels=s.max_image_pixels,
            )
            self.pool = PreprocessPool(
                cfg,
                s.workers,
                on_restart=self.metrics.worker_restarts.inc,
                niceness=s.preprocess_nice,
            )
            self.chain = self._build_chain()
            pool_started = asyncio.create_task(asyncio.to_thread(self.pool.start))
            for stage in self.stages:
                await stage.start(s, self.metrics)
            await pool_started
            self.warmup_s = sum(stage.warmup_s for stage in self.stages)
            self.runner = self.stages[0].runner
            self.batcher = self.stages[0].batcher
            await _check_chain(self.chain)
            if isinstance(self.chain[-1], CpuStage):  # its output goes to top-k as scores
                self.loaded = dataclasses.replace(
                    self.loaded,
                    num_classes=int(np.prod(self.chain[-1].output_shape)),
                    outputs_probabilities=False,
                )
            labels_file = self.spec.labels_file or (s.labels_file if self._primary else "")
            self.labels = load_labels(labels_file, self.loaded.num_classes)
            self.metrics.queue_depth.labels(self.stage_label("preprocess")).set_function(
                lambda: float(self.pool.pending if self.pool else 0)
            )
        except Exception as exc:
            self.state = "failed"
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("pipeline %s failed to load", self.name)
            raise
        self.state = "ready"
        if self.owns_ready:
            self.metrics.ready.set(1)
        log.info(
            "ready: pipeline %s (%s), weights %s, buckets %s, %d preprocessing workers, "
            "%d model instances, device %s",
            self.name,
            " -> ".join(stage.loaded.arch for stage in self.stages),
            self.loaded.weights_source,
            s.batch_buckets,
            s.workers,
            self.stages[0].instances,
            self.runner.device,
        )

    def drain(self) -> None:
        """Stop admitting work; what is in flight finishes."""
        if self.state == "ready":
            self.state = "draining"
        if self.owns_ready:
            self.metrics.ready.set(0)

    async def stop(self) -> None:
        self.drain()
        self.state = "stopped"
        for stage in self.stages:
            await stage.stop()
        if self.pool is not None:
            await asyncio.to_thread(self.pool.close)

    # -- requests --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def admit(self, n: int) -> AsyncIterator[None]:
        """Admit ``n`` images or refuse at once: the pipeline's memory stays bounded."""
        self.check_ready()
        if self._in_flight + n > self.settings.max_queue_images:
            raise Overloaded(
                f"{self._in_flight} images in flight; the limit is {self.settings.max_queue_images}"
            )
        self._in_flight += n
        self.metrics.images_in_flight.set(self._in_flight)
        try:
            yield
        finally:
            self._in_flight -= n
            self.metrics.images_in_flight.set(self._in_flight)

    def check_ready(self) -> None:
        if not self.ready:
            raise NotReady(self.state)

    def deadline(self, timeout_s: float | None = None) -> float:
        return time.monotonic() + (timeout_s or self.settings.request_timeout_s)

    async def _one(
        self, index: int, data: bytes, deadline: float
    ) -> tuple[np.ndarray, float, BatchInfo]:
        assert self.pool is not None and self.stages
        try:
            pre = await self.pool.run(data)
        except ImageError as exc:
            raise InvalidImage(index, exc) from None
        self.metrics.preprocess_duration.observe(pre.seconds)
        self.metrics.stage_seconds.labels(self.stage_label("preprocess")).observe(pre.seconds)
        self._preprocess_busy.add(pre.seconds)
        row, info = await run_chain(self.chain, pre.pixels, deadline)
        return row, pre.seconds, info

    async def classify(
        self, images: list[bytes], k: int = 5, *, timeout_s: float | None = None
    ) -> ClassifyResult:
        """Classify encoded images; raises InvalidImage, Overloaded, NotReady, TimeoutError."""
        start = time.perf_counter()
        deadline = self.deadline(timeout_s)
        async with self.admit(len(images)):
            tasks = [asyncio.ensure_future(self._one(i, d, deadline)) for i, d in enumerate(images)]
            try:
                async with asyncio.timeout_at(_loop_time(deadline)):
                    done = await asyncio.gather(*tasks, return_exceptions=True)
            except TimeoutError:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        for result in done:
            if isinstance(result, InvalidImage):
                raise result
        for result in done:
            if isinstance(result, BaseException):
                raise result
        return self._result(done, start, k)  # type: ignore[arg-type]

    async def infer_pixels(
        self, pixels: np.ndarray, k: int = 5, *, timeout_s: float | None = None
    ) -> ClassifyResult:
        """Run already-decoded ``uint8`` images ``[N, H, W, 3]`` (skips the decode stage)."""
        assert self.chain
        start = time.perf_counter()
        deadline = self.deadline(timeout_s)
        async with self.admit(len(pixels)):
            futures = [asyncio.ensure_future(run_chain(self.chain, p, deadline)) for p in pixels]
            try:
                async with asyncio.timeout_at(_loop_time(deadline)):
                    rows = await asyncio.gather(*futures)
            except TimeoutError:
                for f in futures:
                    f.cancel()
                await asyncio.gather(*futures, return_exceptions=True)
                raise
        return self._result([(row, 0.0, info) for row, info in rows], start, k)

    def _result(
        self, done: list[tuple[np.ndarray, float, BatchInfo]], start: float, k: int
    ) -> ClassifyResult:
        assert self.loaded is not None
        topk_start = time.perf_counter()
        outputs = np.stack([row for row, _, _ in done]) if done else np.zeros((0, 0), np.float32)
        probs = probabilities(outputs, self.loaded.outputs_probabilities)
        timing = Timing(
            preprocess_ms=1000 * max((p for _, p, _ in done), default=0.0),
            queue_ms=1000 * max((i.queue_s for _, _, i in done), default=0.0),
            inference_ms=1000 * max((i.compute_s for _, _, i in done), default=0.0),
            total_ms=1000 * (time.perf_counter() - start),
            batch_sizes=[i.batch_size for _, _, i in done],
        )
        predictions = [top_k(row, k, self.labels) for row in probs]
        topk_s = time.perf_counter() - topk_start
        if done:
            self.metrics.stage_seconds.labels(self.stage_label("topk")).observe(topk_s / len(done))
        self._topk_busy.add(topk_s)
        return ClassifyResult(predictions, probs, timing)


def _composite(first: LoadedModel, models: list[LoadedModel]) -> LoadedModel:
    """The pipeline seen as one model: the first stage's input, the last stage's output."""
    if len(models) == 1:
        return first
    last = models[-1]
    return dataclasses.replace(
        last,
        arch=" -> ".join(m.arch for m in models),
        normalize=first.normalize,
        input_size=first.input_size,
        weights_source=" -> ".join(m.weights_source for m in models),
        random_weights=any(m.random_weights for m in models),
        warnings=[w for m in models for w in m.warnings],
    )


async def _check_chain(chain: list[ModelStage | CpuStage]) -> None:
    """Each model stage must take what the stage before it gives (checked once, at start; a cpu
    stage's output shape comes from running its function once on zeros in a worker)."""
    first = chain[0]
    assert isinstance(first, ModelStage)
    if len(first.input_shape) != 3:
        raise ValueError(
            f"stage {first.name}: the first model must take [H, W, 3] images, "
            f"its input is {list(first.input_shape)}"
        )
    out: tuple[int, ...] = ()
    for before, after in zip(chain, chain[1:], strict=False):
        if isinstance(before, ModelStage):
            out = tuple(int(d) for d in before.loaded.model.output_shape[1:])
        else:
            out = before.output_shape
        if isinstance(after, CpuStage):
            await after.probe(out)
        elif out != tuple(after.input_shape):
            raise ValueError(
                f"stage {before.name} gives {list(out)} but stage {after.name} takes "
                f"{list(after.input_shape)}"
            )


def _loop_time(deadline_monotonic: float) -> float:
    """Convert a ``time.monotonic`` deadline to the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline_monotonic - time.monotonic())
