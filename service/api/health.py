"""Operations routes: liveness, readiness, model metadata, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from ..pipeline.info import PipelineInfo
from ..settings import Settings
from .deps import DataPlaneDep, MetricsDep
from .errors import error_response, retry_headers

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness")
async def healthz(plane: DataPlaneDep) -> JSONResponse:
    """200 while the process can serve, is still loading or drains; 503 once model loading
    failed. ``state`` is readiness's: the model's, or ``draining``."""
    info = plane.fallback
    if info.state == "failed":
        return error_response(503, "model_failed", f"the model failed to load: {info.error}")
    return JSONResponse({"status": "ok", "state": plane.state})


@router.get("/readyz", summary="Readiness")
async def readyz(request: Request, plane: DataPlaneDep) -> JSONResponse:
    """200 only once the model is loaded and every batch bucket warmed, and not while draining."""
    if plane.ready:
        return JSONResponse({"status": "ready"})
    return error_response(
        503,
        "not_ready",
        f"the service is {plane.state}",
        retry_headers(request),
        details={"state": plane.state},
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
    backend: str = Field(description="The Keras backend of the model stage: tensorflow | jax.")
    device: str
    mixed_precision: str = Field(description="off | float16 | bfloat16 (SERVE_MIXED_PRECISION).")
    xla: bool
    preprocess_workers: int = Field(
        description="Decode threads of each front-end process (the name is kept for clients)."
    )
    model_instances: int
    warmup_seconds: float


class ModelList(BaseModel):
    models: list[ModelInfo]


def model_info(info: PipelineInfo, settings: Settings, decode_threads: int) -> dict:
    """``ModelInfo`` of a pipeline."""
    return {
        "name": settings.model_name,
        "architecture": info.arch,
        "weights": info.weights_source,
        "random_weights": info.random_weights,
        "warnings": list(info.warnings),
        "state": info.state,
        "input_shape": [*info.input_size, 3],
        "input_dtype": "uint8 RGB pixels (encoded images are decoded by the service)",
        "preprocessing": {
            "resize": settings.resize,
            "crop_fraction": settings.crop_fraction,
            "normalize": info.normalize,
            "max_image_pixels": settings.max_image_pixels,
        },
        "num_classes": info.num_classes,
        "batch_buckets": settings.batch_buckets,
        "max_batch_size": settings.max_batch_size,
        "max_batch_delay_ms": settings.max_batch_delay_ms,
        "backend": info.backend or settings.backend,
        "device": info.device,
        "mixed_precision": settings.mixed_precision,
        "xla": settings.xla,
        "preprocess_workers": decode_threads,
        "model_instances": info.instances,
        "warmup_seconds": round(info.warmup_s, 3),
    }


@router.get("/v1/models", response_model=ModelList, summary="Model metadata")
async def models(plane: DataPlaneDep) -> JSONResponse:
    """The served model: name, weights source, input shape, batch buckets, device.

    ``GET /v1/models/{name}`` is TensorFlow Serving's model status (``api/tfserving.py``).
    """
    info = model_info(plane.fallback, plane.settings, plane.decoder.threads)
    return JSONResponse({"models": [info]})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text format (with several processes: the whole pod's)."""
    await metrics.settle()
    body, media_type = metrics.render()
    return Response(body, media_type=media_type)
