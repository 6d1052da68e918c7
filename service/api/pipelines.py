"""``GET /v1/pipelines`` (what is configured) and ``POST /v1/pipelines/{name}/classify``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from ..pipeline.config import CpuStageSpec
from ..pipeline.model_stage import CpuStage
from ..pipeline.pipeline import Pipeline
from .classify import CLASSIFY_BODY, ERRORS, ClassifyResponse, classify_with
from .deps import PipelinesDep, SettingsDep, find_pipeline

router = APIRouter(tags=["pipelines"])


class StageOut(BaseModel):
    name: str = Field(description="The stage's label in metrics (serve_queue_depth{stage}).")
    kind: str = Field(
        description="decode (process pool), model (batcher + runner), cpu (process pool) or topk."
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


def describe(pipeline: Pipeline, default: bool) -> PipelineOut:
    stages = [StageOut(name=pipeline.stage_label("preprocess"), kind="decode")]
    if pipeline.chain:
        for stage in pipeline.chain:
            if isinstance(stage, CpuStage):
                stages.append(StageOut(name=stage.name, kind="cpu", function=stage.function))
                continue
            runner = stage.runner
            stages.append(
                StageOut(
                    name=stage.name,
                    kind="model",
                    model=stage.loaded.arch,
                    weights=stage.loaded.weights_source,
                    input_shape=list(runner.input_shape) if runner else None,
                    input_dtype=str(runner.input_dtype) if runner else None,
                )
            )
    else:  # not loaded yet: what the configuration says
        for spec in pipeline.spec.chain:
            if isinstance(spec, CpuStageSpec):
                stages.append(
                    StageOut(
                        name=pipeline.stage_label(spec.name), kind="cpu", function=spec.function
                    )
                )
                continue
            stages.append(
                StageOut(
                    name=pipeline.stage_label(spec.name),
                    kind="model",
                    model=spec.arch or spec.file,
                    weights=spec.weights if spec.arch else spec.file,
                )
            )
    stages.append(StageOut(name=pipeline.stage_label("topk"), kind="topk"))
    loaded = pipeline.loaded
    return PipelineOut(
        name=pipeline.name,
        default=default,
        state=pipeline.state,
        error=pipeline.error,
        num_classes=loaded.num_classes if loaded else 0,
        random_weights=bool(loaded and loaded.random_weights),
        stages=stages,
    )


@router.get("/v1/pipelines", response_model=PipelineList, summary="Configured pipelines")
async def list_pipelines(pipelines: PipelinesDep) -> PipelineList:
    """Every configured pipeline, its stages and state; ``default`` marks the one served when
    a request names none."""
    return PipelineList(
        pipelines=[describe(p, p is pipelines.default) for p in pipelines],
    )


@router.get("/v1/pipelines/{name}", response_model=PipelineOut, summary="One pipeline")
async def get_pipeline(name: str, request: Request, pipelines: PipelinesDep) -> PipelineOut:
    """One pipeline; 404 ``pipeline_not_found`` for an unknown name."""
    pipeline = find_pipeline(request, name)
    return describe(pipeline, pipeline is pipelines.default)


@router.post(
    "/v1/pipelines/{name}/classify",
    response_model=ClassifyResponse,
    openapi_extra={"requestBody": CLASSIFY_BODY["requestBody"]},
    responses={**ERRORS, 404: {"description": "No pipeline of that name."}},  # type: ignore[dict-item]
    summary="Classify with a named pipeline",
)
async def classify_pipeline(name: str, request: Request, settings: SettingsDep) -> ClassifyResponse:
    """``POST /v1/classify`` through the pipeline ``name``."""
    return await classify_with(request, settings, name)
