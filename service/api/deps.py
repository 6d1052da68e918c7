"""Dependencies shared by the routes, declared once (tests swap them with dependency_overrides).

The ones that only read app state are ``async``: FastAPI runs a plain ``def`` dependency in its
thread pool, a thread hop per request for a dictionary lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..metrics import Metrics
from ..pipeline.pipeline import Pipeline
from ..pipeline.registry import Pipelines, UnknownPipeline
from ..settings import Settings
from .errors import ApiError


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


async def get_pipelines(request: Request) -> Pipelines:
    return request.app.state.pipelines


def find_pipeline(request: Request, name: str | None) -> Pipeline:
    """The pipeline a request names: a configured pipeline name, or ``SERVE_MODEL_NAME`` (the
    protocols' model name) for the default; None or empty for the default. Unknown: 404
    ``pipeline_not_found``. For the V2 / TF Serving routes, where the model name picks one.
    """
    settings: Settings = request.app.state.settings
    pipelines: Pipelines = request.app.state.pipelines
    if not name or name == settings.model_name:
        return pipelines.default
    try:
        return pipelines.get(name)
    except UnknownPipeline as exc:
        raise ApiError(404, "pipeline_not_found", str(exc)) from None


def protocol_model(
    request: Request,
    name: str,
    version: str | None,
    *,
    available: str,
    unknown_model: str,
    unknown_version: str,
) -> Pipeline:
    """The pipeline a standard protocol's model name (and version) picks, for V2 / TF Serving.

    ``SERVE_MODEL_NAME`` is the default pipeline, a configured pipeline is a model of its own
    name, each with one version ``available``. Anything else: 404 with the protocol's own
    message, a template over ``name``, ``version``, ``served`` and ``available``.
    """
    fields = {"name": name, "version": version, "available": available}
    try:
        pipeline = find_pipeline(request, name)
    except ApiError:
        state = request.app.state
        served = sorted({state.settings.model_name, *state.pipelines.names()})
        raise ApiError(
            404, "model_not_found", unknown_model.format(served=served, **fields)
        ) from None
    if version is not None and version != available:
        raise ApiError(404, "version_not_found", unknown_version.format(**fields))
    return pipeline


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
PipelinesDep = Annotated[Pipelines, Depends(get_pipelines)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
