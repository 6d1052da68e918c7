"""The dataplane: one call from a decoded request to its result, for every protocol.

    route -> codec -> DataPlane.infer -> decode (this process) -> engine (model and cpu
    stages) -> top-k -> codec -> response

``infer`` picks the pipeline, checks its readiness, admits the request's images against the
bound, sets the deadline, decodes the images in this process's threads, sends each through the
engine as soon as it is decoded, and ranks the outputs. It knows no wire format: the codecs
(``service/codecs``) turn bodies into :class:`~.request.InferRequest` and results back; the
engine is the in-process :class:`~service.engine.registry.PipelineRegistry` or, in the
front-end/accelerator layout, the client of the accelerator process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from .. import tracing
from ..errors import (
    DeadlineExceeded,
    InvalidInput,
    NotReady,
    PipelineNotFound,
    ServeError,
)
from ..metrics import Metrics, WorkWindow
from ..pipeline.info import BatchInfo, PipelineInfo
from ..preprocess.decode import PreprocessConfig
from ..preprocess.decoder import Decoder
from ..settings import Settings
from .admission import Admission, Bound
from .postprocess import probabilities, top_k
from .request import InferRequest, InferResult, Timing


class Engine(Protocol):
    """What the dataplane needs of the stages after decode (in this process or another)."""

    fallback: str  # the pipeline a request gets when it names none

    def names(self) -> list[str]: ...

    def info(self, name: str) -> PipelineInfo: ...

    async def run(
        self, name: str, item: np.ndarray, deadline: float
    ) -> tuple[np.ndarray, BatchInfo]: ...

    async def start(self) -> None: ...

    def drain(self) -> None: ...

    async def stop(self) -> None: ...


class _PipelineStats:
    """One pipeline's ``serve_model_*`` series, looked up once (they count every request)."""

    def __init__(self, m: Metrics, name: str):
        self.succeeded = m.model_requests.labels(name, "success")
        self.failed = m.model_requests.labels(name, "fail")
        self.succeeded_s = m.model_request_seconds.labels(name, "success")
        self.failed_s = m.model_request_seconds.labels(name, "fail")
        self.images = m.model_images.labels(name)
        self.decode_s = m.model_phase_seconds.labels(name, "decode")
        self.queue_s = m.model_phase_seconds.labels(name, "queue")
        self.compute_s = m.model_phase_seconds.labels(name, "compute")
        self.last = m.model_last_inference.labels(name)


class DataPlane:
    """Args:
    settings: limits, deadlines, decode settings.
    engine: runs items through a pipeline's stages after decode.
    decoder: decodes images in this process.
    metrics: where decode and top-k report.
    admission: the bound of images in flight (default: this process's own).
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        decoder: Decoder,
        metrics: Metrics,
        admission: Bound | None = None,
    ):
        self.settings = settings
        self.engine = engine
        self.decoder = decoder
        self.metrics = metrics
        self.admission: Bound = admission or Admission(settings.max_queue_images, metrics)
        self.draining = False
        # Called once the process drains, maybe from a signal handler: they must only schedule.
        self.on_drain: list[Callable[[], None]] = []
        metrics.watch(metrics.ready, lambda: 1.0 if self.ready else 0.0)
        metrics.frontends.set(1)  # this process answers requests
        self._configs: dict[tuple[int, int], PreprocessConfig] = {}
        self._stats: dict[str, _PipelineStats] = {}
        self._stages: dict[str, Any] = {}  # serve_stage_seconds{stage}, by stage
        self._running = 0  # requests in infer() now
        self._decoding = dict.fromkeys(engine.names(), 0)  # images being decoded, by pipeline
        # pipeline -> busy windows of its decode and top-k stages
        self._windows: dict[str, tuple[WorkWindow, WorkWindow]] = {}
        for name in engine.names():
            stages = engine.info(name).stages
            decode, topk = stages[0].name, stages[-1].name
            self._windows[name] = (
                metrics.stage_work_window(decode, decoder.threads),
                metrics.stage_work_window(topk),
            )
            metrics.watch(metrics.queue_depth.labels(decode), self._depth(name))

    def _depth(self, name: str) -> Callable[[], float]:
        return lambda: float(self._decoding[name])

    # -- which pipeline --------------------------------------------------------------------

    def resolve(self, name: str | None) -> PipelineInfo:
        """The pipeline a request names: a pipeline's name or its model name (SERVE_MODEL_NAME
        for ``default``); None or empty: ``SERVE_PIPELINE``. Raises ``PipelineNotFound``."""
        if not name:
            return self.engine.info(self.engine.fallback)
        if name == self.settings.model_name:
            return self.engine.info("default")
        try:
            return self.engine.info(name)
        except PipelineNotFound:
            raise PipelineNotFound.of(name, self.engine.names()) from None

    def served_models(self) -> list[str]:
        """Every name a protocol may ask for."""
        return sorted({self.settings.model_name, *self.engine.names()})

    def check(self, name: str | None) -> PipelineInfo:
        """The pipeline, if it can take a request now (before a large body is read)."""
        return self.check_ready(self.resolve(name))

    def check_ready(self, info: PipelineInfo) -> PipelineInfo:
        """``info`` if its pipeline can take a request now; else ``NotReady``."""
        if self.draining:
            raise NotReady.of("draining")
        if not info.ready:
            raise NotReady.of(info.state)
        return info

    @property
    def fallback(self) -> PipelineInfo:
        return self.engine.info(self.engine.fallback)

    # -- the service's state ---------------------------------------------------------------

    @property
    def state(self) -> str:
        """The fallback pipeline's state, or ``draining`` once this process drains."""
        return "draining" if self.draining else self.fallback.state

    @property
    def ready(self) -> bool:
        """Whether this process takes requests (``/readyz``)."""
        return not self.draining and self.fallback.ready

    def drain(self) -> None:
        """Take no new requests (SIGTERM); what is in flight finishes."""
        if self.draining:
            return
        self.draining = True
        self.engine.drain()
        for hook in self.on_drain:
            hook()

    # -- inference -------------------------------------------------------------------------

    async def infer(self, request: InferRequest, info: PipelineInfo | None = None) -> InferResult:
        """Run one request; raises a ``ServeError`` (bad input, not ready, overloaded,
        deadline exceeded, model error). ``info``: the pipeline a transport already checked
        (``check``) before it read the body, not looked up again."""
        start = time.perf_counter()
        info = self.check(request.pipeline) if info is None else self.check_ready(info)
        self._running += 1
        try:
            try:
                result = await self._infer(info, request)
            except ServeError:
                self._count(info.name, "fail", time.perf_counter() - start)
                raise
            self._count(info.name, "success", time.perf_counter() - start, result)
            return result
        finally:
            self._running -= 1
            if not self._running:  # idle: the metrics count this request before it is answered
                self.metrics.tally.flush()

    def _count(
        self, name: str, outcome: str, seconds: float, result: InferResult | None = None
    ) -> None:
        """Per-pipeline statistics (Triton's model statistics, ``serve_model_*``)."""
        stats = self._stats.get(name)
        if stats is None:
            stats = self._stats[name] = _PipelineStats(self.metrics, name)
        tally = self.metrics.tally
        if result is None:
            tally.inc(stats.failed)
            tally.inc(stats.failed_s, seconds)
            return
        t = result.timing
        tally.inc(stats.succeeded)
        tally.inc(stats.succeeded_s, seconds)
        tally.inc(stats.images, len(result.probabilities))
        tally.inc(stats.decode_s, t.preprocess_ms / 1000)
        tally.inc(stats.queue_s, t.queue_ms / 1000)
        tally.inc(stats.compute_s, t.inference_ms / 1000)
        tally.set(stats.last, time.time())

    async def _infer(self, info: PipelineInfo, request: InferRequest) -> InferResult:
        start = time.perf_counter()
        if request.pixels is not None:
            self._check_pixels(info, request.pixels)
        timeout_s = min(
            request.timeout_s or self.settings.request_timeout_s, self.settings.request_timeout_s
        )
        deadline = time.monotonic() + timeout_s
        loop_deadline = asyncio.get_running_loop().time() + timeout_s
        with self.admission.admit(len(request)):
            if request.pixels is not None:
                work = [self._pixels(info.name, p, deadline) for p in request.pixels]
            else:
                work = [self._image(info, i, d, deadline) for i, d in enumerate(request.images)]
            tasks = [asyncio.ensure_future(w) for w in work]
            try:
                async with asyncio.timeout_at(loop_deadline):
                    done = await asyncio.gather(*tasks, return_exceptions=True)
            except TimeoutError:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise DeadlineExceeded("the request did not finish before its deadline") from None
        # A bad image is the client's error whatever else happened to the request.
        for result in done:
            if isinstance(result, InvalidInput):
                raise result
        for result in done:
            if isinstance(result, BaseException):
                raise result
        return self._result(info, done, start, request.top_k)  # type: ignore[arg-type]

    def _check_pixels(self, info: PipelineInfo, pixels: np.ndarray) -> None:
        height, width = info.input_size
        if pixels.dtype != np.uint8 or pixels.shape[1:] != (height, width, 3):
            raise InvalidInput(
                f"pixels must be [N, {height}, {width}, 3] uint8, got "
                f"{list(pixels.shape)} {pixels.dtype}"
            )

    async def _pixels(
        self, name: str, pixels: np.ndarray, deadline: float
    ) -> tuple[np.ndarray, float, BatchInfo]:
        row, info = await self.engine.run(name, pixels, deadline)
        if tracing.ENABLED:
            tracing.batch_spans(tracing.now_ns(), info.queue_s, info.compute_s, info.batch_size)
        return row, 0.0, info

    async def _image(
        self, info: PipelineInfo, index: int, data: bytes, deadline: float
    ) -> tuple[np.ndarray, float, BatchInfo]:
        self._decoding[info.name] += 1
        try:
            with tracing.span("decode"):
                pre = await self.decoder.decode(data, self._config(info))
        except ServeError as exc:
            if isinstance(exc, InvalidInput):
                raise InvalidInput(f"image {index}: {exc.message}", exc.code, image=index) from None
            raise
        finally:
            self._decoding[info.name] -= 1
        tally = self.metrics.tally
        tally.observe(self.metrics.preprocess_duration, pre.seconds)
        tally.observe(self._stage_series(info.stages[0].name), pre.seconds)
        self._windows[info.name][0].add(pre.seconds)
        row, batch = await self.engine.run(info.name, pre.pixels, deadline)
        if tracing.ENABLED:
            tracing.batch_spans(tracing.now_ns(), batch.queue_s, batch.compute_s, batch.batch_size)
        return row, pre.seconds, batch

    def _stage_series(self, stage: str) -> Any:
        series = self._stages.get(stage)
        if series is None:
            series = self._stages[stage] = self.metrics.stage_seconds.labels(stage)
        return series

    def _config(self, info: PipelineInfo) -> PreprocessConfig:
        cfg = self._configs.get(info.input_size)
        if cfg is None:
            s = self.settings
            cfg = self._configs[info.input_size] = PreprocessConfig(
                size=info.input_size,
                resize=s.resize,
                crop_fraction=s.crop_fraction,
                max_pixels=s.max_image_pixels,
            )
        return cfg

    def _result(
        self,
        info: PipelineInfo,
        done: list[tuple[np.ndarray, float, BatchInfo]],
        start: float,
        k: int,
    ) -> InferResult:
        topk_start = time.perf_counter()
        if len(done) == 1:  # one image: its row, without a copy
            outputs = done[0][0][np.newaxis]
        elif done:
            outputs = np.stack([row for row, _, _ in done])
        else:
            outputs = np.zeros((0, 0), np.float32)
        probs = probabilities(outputs, info.outputs_probabilities)
        predictions = [top_k(row, k, info.labels) for row in probs] if k > 0 else []
        timing = Timing(
            preprocess_ms=1000 * max((p for _, p, _ in done), default=0.0),
            queue_ms=1000 * max((b.queue_s for _, _, b in done), default=0.0),
            inference_ms=1000 * max((b.compute_s for _, _, b in done), default=0.0),
            total_ms=1000 * (time.perf_counter() - start),
            batch_sizes=[b.batch_size for _, _, b in done],
        )
        topk_s = time.perf_counter() - topk_start
        if done:
            self.metrics.tally.observe(self._stage_series(info.stages[-1].name), topk_s / len(done))
        self._windows[info.name][1].add(topk_s)
        return InferResult(info, probs, predictions, timing)
