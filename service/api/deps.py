"""Dependencies shared by the routes, declared once (tests swap them with dependency_overrides).

They only read app state, so they are ``async``: FastAPI runs a plain ``def`` dependency in its
thread pool, a thread hop per request for an attribute lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..dataplane.dataplane import DataPlane
from ..errors import NotFound
from ..metrics import Metrics
from ..pipeline.info import PipelineInfo
from ..settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def protocol_model(
    plane: DataPlane,
    name: str,
    version: str | None,
    *,
    available: str,
    unknown_model: str,
    unknown_version: str,
) -> PipelineInfo:
    """The pipeline a standard protocol's model name (and version) picks, for V2 / TF Serving.

    Every pipeline is a model of its own name (``default`` also of SERVE_MODEL_NAME), each with
    one version ``available``. Anything else: 404 in the protocol's own words, a template over
    ``name``, ``version``, ``served`` and ``available``.
    """
    fields = {"name": name, "version": version, "available": available}
    try:
        info = plane.resolve(name)
    except NotFound:
        served = plane.served_models()
        raise NotFound(unknown_model.format(served=served, **fields), "model_not_found") from None
    if version is not None and version != available:
        raise NotFound(unknown_version.format(**fields), "version_not_found")
    return info
