"""Dependencies shared by the routes, declared once (tests swap them with dependency_overrides).

They only read app state, so they are ``async``: FastAPI runs a plain ``def`` dependency in its
thread pool, a thread hop per request for an attribute lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..dataplane.dataplane import DataPlane
from ..metrics import Metrics
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
