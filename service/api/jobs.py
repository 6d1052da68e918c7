"""Asynchronous jobs: ``POST /v1/jobs`` (202 + Location), ``GET`` and ``DELETE /v1/jobs/{id}``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from ..jobs.callbacks import CallbackRefused, check_callback_url
from ..jobs.manager import ResponseManager
from ..jobs.model import JobConflict, StoreFull, StoreUnavailable
from .classify import CLASSIFY_BODY
from .deps import SettingsDep, find_pipeline
from .errors import ApiError
from .inputs import ClassifyJSON, parse_images

router = APIRouter(tags=["jobs"])


class JobJSON(ClassifyJSON):
    """JSON body of ``POST /v1/jobs``: the classify body and an optional callback."""

    callback_url: str | None = Field(
        None,
        max_length=2048,
        description="Where to POST the finished job (host in SERVE_CALLBACK_ALLOWED_HOSTS), "
        "signed with X-Signature-256: sha256=HMAC-SHA256(SERVE_CALLBACK_SECRET, body).",
    )


async def get_manager(request: Request) -> ResponseManager:
    return request.app.state.jobs


ManagerDep = Annotated[ResponseManager, Depends(get_manager)]
JOB_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown job, or its result expired (SERVE_JOB_TTL_S)."},
}


@router.post(
    "/v1/jobs",
    status_code=202,
    openapi_extra={
        **CLASSIFY_BODY,
        "parameters": [
            *CLASSIFY_BODY["parameters"],
            {
                "name": "callback_url",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
            },
        ],
    },
    responses={
        400: {"description": "Bad input, or a callback_url that is not allowed."},
        404: {"description": "Unknown pipeline."},
        413: {"description": "Body over SERVE_MAX_JOB_BYTES."},
        503: {"description": "The job store is full; see Retry-After."},
    },
    summary="Submit an asynchronous job",
)
async def submit_job(
    request: Request,
    settings: SettingsDep,
    manager: ManagerDep,
    pipeline: str | None = Query(None, max_length=64, description="A configured pipeline."),
) -> JSONResponse:
    """Accept images as ``/v1/classify`` does (up to SERVE_MAX_IMAGES_PER_JOB); answer 202 with
    the job id and its ``Location`` at once."""
    limits = settings.model_copy(
        update={
            "max_images_per_request": settings.max_images_per_job,
            "max_body_bytes": settings.max_job_bytes,
        }
    )
    batch = await parse_images(request, limits, JobJSON)
    name = batch.options.get("pipeline") or pipeline
    if batch.options.get("pipeline") and pipeline and batch.options["pipeline"] != pipeline:
        raise ApiError(
            400, "conflicting_pipeline", "the query and the body name different pipelines"
        )
    chosen = find_pipeline(request, name)
    callback = batch.options.get("callback_url") or request.query_params.get("callback_url")
    if callback:
        try:
            check_callback_url(callback, settings.callback_allowed_hosts)
        except CallbackRefused as exc:
            raise ApiError(400, exc.code, exc.message) from None
        if not settings.callback_secret.get_secret_value():
            raise ApiError(
                400, "callbacks_disabled", "callbacks need SERVE_CALLBACK_SECRET to sign them"
            )
    try:
        job = await manager.submit(batch.images, batch.top_k, chosen.name, callback)
    except (StoreFull, StoreUnavailable) as exc:
        code = "jobs_full" if isinstance(exc, StoreFull) else "jobs_unavailable"
        raise ApiError(
            503, code, f"{exc}; retry", {"Retry-After": str(settings.retry_after_s)}
        ) from None
    location = f"/v1/jobs/{job.id}"
    return JSONResponse(
        {**job.public(), "location": location}, status_code=202, headers={"Location": location}
    )


async def _job_or_404(manager: ResponseManager, job_id: str):
    try:
        job = await manager.store.get(job_id) if len(job_id) <= 64 else None
    except StoreUnavailable as exc:
        raise ApiError(503, "jobs_unavailable", f"{exc}; retry", {"Retry-After": "1"}) from None
    if job is None:
        raise ApiError(404, "job_not_found", f"no job {job_id[:64]!r} (unknown, or it expired)")
    return job


@router.get("/v1/jobs/{job_id}", responses=JOB_ERRORS, summary="A job's state and result")
async def get_job(job_id: str, manager: ManagerDep) -> JSONResponse:
    """``queued | running | succeeded | failed | cancelled``, timestamps, result or error."""
    job = await _job_or_404(manager, job_id)
    return JSONResponse(job.public())


@router.delete(
    "/v1/jobs/{job_id}",
    responses={**JOB_ERRORS, 409: {"description": "The job is running or finished."}},
    summary="Cancel a queued job",
)
async def cancel_job(job_id: str, manager: ManagerDep) -> JSONResponse:
    """Cancel a job that has not started; 409 ``job_running`` / ``job_finished`` otherwise."""
    await _job_or_404(manager, job_id)
    try:
        job = await manager.store.cancel(job_id)
    except StoreUnavailable as exc:
        raise ApiError(503, "jobs_unavailable", f"{exc}; retry", {"Retry-After": "1"}) from None
    except JobConflict as exc:
        code = "job_running" if exc.status == "running" else "job_finished"
        raise ApiError(
            409, code, f"job {job_id} is {exc.status}; only queued jobs can be cancelled"
        ) from None
    if job is None:
        raise ApiError(404, "job_not_found", f"no job {job_id!r} (unknown, or it expired)")
    manager.metrics.jobs.labels("cancelled").inc()
    return JSONResponse(job.public())
