"""``GET /v1/pipelines`` (what is configured) and ``POST /v1/pipelines/{name}/classify``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ..codecs.classify import ClassifyResponse
from ..pipeline.info import PipelineInfo
from .classify import CLASSIFY_BODY, ERRORS, classify_with
from .deps import DataPlaneDep

router = APIRouter(tags=["pipelines"])


class StageOut(BaseModel):
    name: str = Field(description="The stage's label in metrics (serve_queue_depth{stage}).")
    kind: str = Field(
        description="decode (front-end threads), model (batcher + runner), cpu (worker "
        "processes) or topk."
    )
    model: str | None = Field(default=None, description="Model stages: architecture or file.")
    function: str | None = Field(default=None, description="Cpu stages: module:function.")
    weights: str | None = None
    input_shape: list[int] | None = Field(
        default=None, description="Model stages: one item's shape."
    )
    input_dtype: str | None = None


class PipelineOut(BaseModel):
    name: str
    default: bool = Field(description="True for the one requests get when they name none.")
    state: str = Field(description="created | loading | ready | draining | failed | stopped")
    error: str | None = None
    num_classes: int
    random_weights: bool
    stages: list[StageOut]


class PipelineList(BaseModel):
    pipelines: list[PipelineOut]


def describe(info: PipelineInfo, default: bool) -> dict:
    stages = [
        {
            "name": s.name,
            "kind": s.kind,
            "model": s.model,
            "function": s.function,
            "weights": s.weights,
            "input_shape": list(s.input_shape) if s.input_shape is not None else None,
            "input_dtype": s.input_dtype,
        }
        for s in info.stages
    ]
    return {
        "name": info.name,
        "default": default,
        "state": info.state,
        "error": info.error,
        "num_classes": info.num_classes,
        "random_weights": info.random_weights,
        "stages": stages,
    }


@router.get("/v1/pipelines", response_model=PipelineList, summary="Configured pipelines")
async def list_pipelines(plane: DataPlaneDep) -> JSONResponse:
    """Every configured pipeline, its stages and state; ``default`` marks the one served when
    a request names none."""
    fallback = plane.engine.fallback
    infos = [plane.engine.info(name) for name in plane.engine.names()]
    return JSONResponse({"pipelines": [describe(i, i.name == fallback) for i in infos]})


@router.get("/v1/pipelines/{name}", response_model=PipelineOut, summary="One pipeline")
async def get_pipeline(name: str, plane: DataPlaneDep) -> JSONResponse:
    """One pipeline; 404 ``pipeline_not_found`` for an unknown name."""
    info = plane.resolve(name)
    return JSONResponse(describe(info, info.name == plane.engine.fallback))


@router.post(
    "/v1/pipelines/{name}/classify",
    response_model=ClassifyResponse,
    openapi_extra={"requestBody": CLASSIFY_BODY["requestBody"]},
    responses={**ERRORS, 404: {"description": "No pipeline of that name."}},  # type: ignore[dict-item]
    summary="Classify with a named pipeline",
)
async def classify_pipeline(name: str, request: Request) -> JSONResponse:
    """``POST /v1/classify`` through the pipeline ``name``."""
    return await classify_with(request, name)
