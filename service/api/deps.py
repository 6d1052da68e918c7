"""Dependencies shared by the routes, declared once (tests swap them with dependency_overrides)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..metrics import Metrics
from ..pipeline.pipeline import Pipeline
from ..settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
