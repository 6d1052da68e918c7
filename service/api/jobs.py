"""Asynchronous jobs: ``POST /v1/jobs`` (202 + Location), ``GET`` and ``DELETE /v1/jobs/{id}``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from ..codecs import classify as codec
from ..errors import InvalidInput, NotFound
from ..jobs.callbacks import check_callback_url
from ..jobs.record import Job
from ..jobs.runner import JobRunner
from .body import read_body
from .classify import CLASSIFY_BODY
from .deps import DataPlaneDep

router = APIRouter(tags=["jobs"])


class JobJSON(codec.ClassifyJSON):
    """JSON body of ``POST /v1/jobs``: the classify body and an optional callback."""

    callback_url: str | None = Field(
        None,
        max_length=2048,
        description="Where to POST the finished job (host in SERVE_CALLBACK_ALLOWED_HOSTS), "
        "signed with X-Signature-256: sha256=HMAC-SHA256(SERVE_CALLBACK_SECRET, body).",
    )


async def get_runner(request: Request) -> JobRunner:
    return request.app.state.jobs


RunnerDep = Annotated[JobRunner, Depends(get_runner)]
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
    plane: DataPlaneDep,
    runner: RunnerDep,
    pipeline: str | None = Query(None, max_length=64, description="A configured pipeline."),
) -> JSONResponse:
    """Accept images as ``/v1/classify`` does (up to SERVE_MAX_IMAGES_PER_JOB); answer 202 with
    the job id and its ``Location`` at once."""
    settings = plane.settings
    limits = settings.model_copy(
        update={
            "max_images_per_request": settings.max_images_per_job,
            "max_body_bytes": settings.max_job_bytes,
        }
    )
    body = await read_body(request, limits.max_body_bytes)
    batch = await codec.decode(
        body,
        request.headers.get("content-type", ""),
        request.query_params.get("top_k"),
        limits,
        JobJSON,
    )
    name = batch.options.get("pipeline") or pipeline
    if batch.options.get("pipeline") and pipeline and batch.options["pipeline"] != pipeline:
        raise InvalidInput(
            "the query and the body name different pipelines", "conflicting_pipeline"
        )
    chosen = plane.resolve(name)
    callback = batch.options.get("callback_url") or request.query_params.get("callback_url")
    if callback:
        check_callback_url(callback, settings.callback_allowed_hosts)
        if not settings.callback_secret.get_secret_value():
            raise InvalidInput(
                "callbacks need SERVE_CALLBACK_SECRET to sign them", "callbacks_disabled"
            )
    job = await runner.submit(batch.images, batch.top_k, chosen.name, callback)
    location = f"/v1/jobs/{job.id}"
    return JSONResponse(
        {**job.public(), "location": location}, status_code=202, headers={"Location": location}
    )


def _not_found(job_id: str) -> NotFound:
    return NotFound(f"no job {job_id[:64]!r} (unknown, or it expired)", "job_not_found")


async def _job_or_404(runner: JobRunner, job_id: str) -> Job:
    job = await runner.store.get(job_id) if len(job_id) <= 64 else None
    if job is None:
        raise _not_found(job_id)
    return job


@router.get("/v1/jobs/{job_id}", responses=JOB_ERRORS, summary="A job's state and result")
async def get_job(job_id: str, runner: RunnerDep) -> JSONResponse:
    """``queued | running | succeeded | failed | cancelled``, timestamps, result or error."""
    job = await _job_or_404(runner, job_id)
    return JSONResponse(job.public())


@router.delete(
    "/v1/jobs/{job_id}",
    responses={**JOB_ERRORS, 409: {"description": "The job is running or finished."}},
    summary="Cancel a queued job",
)
async def cancel_job(job_id: str, runner: RunnerDep) -> JSONResponse:
    """Cancel a job that has not started; 409 ``job_running`` / ``job_finished`` otherwise."""
    await _job_or_404(runner, job_id)
    job = await runner.store.cancel(job_id)
    if job is None:
        raise _not_found(job_id)
    runner.metrics.jobs.labels("cancelled").inc()
    return JSONResponse(job.public())
