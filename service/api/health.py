"""Operations routes: liveness, readiness, model metadata, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from .deps import MetricsDep, PipelineDep, SettingsDep
from .errors import error_response

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness")
async def healthz(pipeline: PipelineDep) -> JSONResponse:
    """200 while the process can serve or is still loading; 503 once model loading failed."""
    if pipeline.state == "failed":
        return error_response(503, "model_failed", f"the model failed to load: {pipeline.error}")
    return JSONResponse({"status": "ok", "state": pipeline.state})


@router.get("/readyz", summary="Readiness")
async def readyz(pipeline: PipelineDep, settings: SettingsDep) -> JSONResponse:
    """200 only once the model is loaded and every batch bucket warmed, and not while draining."""
    if pipeline.ready:
        return JSONResponse({"status": "ready"})
    return error_response(
        503,
        "not_ready",
        f"the service is {pipeline.state}",
        {"Retry-After": str(settings.retry_after_s)},
        state=pipeline.state,
    )


class ModelInfo(BaseModel):
    name: str
    architecture: str
    weights: str = Field(
        description="Where the weights came from: imagenet:<path>, a file, or random."
    )
    random_weights: bool = Field(description="True: predictions are meaningless.")
    warnings: list[str]
    state: str
    input_shape: list[int] = Field(description="[height, width, channels] of the model input.")
    input_dtype: str
    preprocessing: dict[str, object]
    num_classes: int
    batch_buckets: list[int]
    max_batch_size: int
    max_batch_delay_ms: float
    device: str
    mixed_precision: bool
    xla: bool
    preprocess_workers: int
    model_instances: int
    warmup_seconds: float


class ModelList(BaseModel):
    models: list[ModelInfo]


def model_info(pipeline, settings) -> ModelInfo:
    loaded, runner = pipeline.loaded, pipeline.runner
    return ModelInfo(
        name=settings.model_name,
        architecture=loaded.arch if loaded else settings.model,
        weights=loaded.weights_source if loaded else settings.weights,
        random_weights=bool(loaded and loaded.random_weights),
        warnings=list(loaded.warnings) if loaded else [],
        state=pipeline.state,
        input_shape=[*(loaded.input_size if loaded else (224, 224)), 3],
        input_dtype="uint8 RGB pixels (encoded images are decoded by the service)",
        preprocessing={
            "resize": settings.resize,
            "crop_fraction": settings.crop_fraction,
            "normalize": loaded.normalize if loaded else None,
            "max_image_pixels": settings.max_image_pixels,
        },
        num_classes=loaded.num_classes if loaded else 0,
        batch_buckets=settings.batch_buckets,
        max_batch_size=settings.max_batch_size,
        max_batch_delay_ms=settings.max_batch_delay_ms,
        device=runner.device if runner else "",
        mixed_precision=settings.mixed_precision,
        xla=settings.xla,
        preprocess_workers=settings.workers,
        model_instances=pipeline.stages[0].instances if pipeline.stages else 0,
        warmup_seconds=round(pipeline.warmup_s, 3),
    )


@router.get("/v1/models", response_model=ModelList, summary="Model metadata")
async def models(pipeline: PipelineDep, settings: SettingsDep) -> ModelList:
    """The served model: name, weights source, input shape, batch buckets, device.

    ``GET /v1/models/{name}`` is TensorFlow Serving's model status (``api/tfserving.py``).
    """
    return ModelList(models=[model_info(pipeline, settings)])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
