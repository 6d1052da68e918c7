"""The job runner (the pipeline design's response manager): takes jobs from the store, runs
them through the dataplane, saves the results and delivers them to their callbacks.

Each replica runs ``SERVE_JOB_CONCURRENCY`` workers. A job's images go through its pipeline in
chunks of at most ``SERVE_MAX_IMAGES_PER_REQUEST`` (so a job of hundreds of images shares the
pipeline fairly with interactive requests); a chunk refused because the pipeline is at capacity
waits and retries instead of failing the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from ..codecs.classify import answer
from ..dataplane.dataplane import DataPlane
from ..dataplane.request import InferRequest, InferResult
from ..errors import (
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    JobFailed,
    ModelError,
    NotReady,
    ServeError,
    Unavailable,
)
from ..metrics import Metrics
from ..settings import Settings
from . import callbacks
from .record import FAILED, SUCCEEDED, Claim, Job, JobStore
from .retry import Backoff, retry

log = logging.getLogger(__name__)

# A chunk refused for capacity waits 0.05 s, 0.1 s, ... 2 s between tries: about 30 s in all.
MAX_TRIES = 20
CAPACITY_BACKOFF = Backoff(0.05, max_s=2.0)
WAIT_FOR = (NotReady, Unavailable, DeadlineExceeded)


class Abandoned(Exception):
    """The replica is stopping: leave the job to another replica (Redis) or fail it (memory)."""


def make_store(settings: Settings) -> JobStore:
    """Redis when ``SERVE_REDIS_URL`` is set, else in memory."""
    if settings.redis_url:
        from .redis_store import RedisJobStore

        return RedisJobStore(
            settings.redis_url,
            max_jobs=settings.max_jobs,
            ttl_s=settings.job_ttl_s,
            claim_idle_s=settings.job_claim_idle_s,
        )
    from .memory import MemoryJobStore

    return MemoryJobStore(settings.max_jobs, settings.job_ttl_s)


class JobRunner:
    """Args:
    store: where jobs wait and results stay.
    plane: runs a job's images (each job names its pipeline).
    settings: job and callback settings.
    metrics: ``serve_jobs_total{event}``.
    workers: jobs this runner works on at once (default ``SERVE_JOB_CONCURRENCY``; each
        front-end process runs its share of the pod's).
    """

    def __init__(
        self,
        store: JobStore,
        plane: DataPlane,
        settings: Settings,
        metrics: Metrics,
        workers: int | None = None,
    ):
        self.store = store
        self.plane = plane
        self.settings = settings
        self.metrics = metrics
        self.workers = settings.job_concurrency if workers is None else workers
        self._workers: list[asyncio.Task] = []
        self._stopping = False

    async def start(self) -> None:
        await self.store.start()
        self._workers = [
            asyncio.create_task(self._work(), name=f"job-worker-{i}") for i in range(self.workers)
        ]

    async def stop(self) -> None:
        self._stopping = True
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._workers = []
        await self.store.close()

    async def submit(
        self, images: list[bytes], top_k: int, pipeline: str, callback_url: str | None
    ) -> Job:
        job = Job(
            id=Job.new_id(),
            pipeline=pipeline,
            top_k=top_k,
            images=len(images),
            callback_url=callback_url,
            callback={"status": "pending", "attempts": 0} if callback_url else None,
        )
        await self.store.submit(job, images)
        self.metrics.jobs.labels("submitted").inc()
        return job

    # -- workers ---------------------------------------------------------------------------

    async def _work(self) -> None:
        while not self._stopping:
            if not self.plane.fallback.ready:  # loading (or draining: take nothing new)
                await asyncio.sleep(0.2)
                continue
            try:
                claim = await self.store.take(1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job store unavailable; retrying")
                await asyncio.sleep(1.0)
                continue
            if claim is None:
                continue
            try:
                await self._handle(claim)
            except asyncio.CancelledError:
                raise
            except Abandoned:  # stopping or draining: the loop's own checks take over
                continue
            except Exception:
                # The worker outlives any one job. Its claim stays unacknowledged: Redis hands
                # the job out again once the claim is not renewed, the pod's shared store once
                # this front end's connection to it drops (why a save fails there).
                log.exception("job %s: could not be finished", claim.job.id)
                await asyncio.sleep(1.0)

    async def _handle(self, claim: Claim) -> None:
        job = claim.job
        if job.attempts > 1 and not job.finished:
            self.metrics.jobs.labels("claimed").inc()
        if not job.finished:
            if job.attempts > self.settings.job_max_attempts:
                self._give_up(job)
            else:
                await self._attempt(job, claim)
            await self.store.save(job)
            self.metrics.jobs.labels(job.status).inc()
            log.info("job %s %s (%d images)", job.id, job.status, job.images)
        if job.callback_url and (job.callback or {}).get("status") == "pending":
            await self._callback(job)
            await self.store.save(job)
        await self.store.ack(claim)

    async def _attempt(self, job: Job, claim: Claim) -> None:
        heartbeat = asyncio.create_task(self._renew(claim))
        try:
            await self._run(job, claim.images)
        except (Abandoned, asyncio.CancelledError):
            if not getattr(self.store, "durable", False):
                job.status, job.finished_at = FAILED, time.time()
                job.error = {"code": "shutdown", "message": "the service stopped"}
                await asyncio.shield(self.store.save(job))
            raise
        finally:
            heartbeat.cancel()

    def _give_up(self, job: Job) -> None:
        """Fails a job whose runners all died while it ran: one that brings down whoever
        runs it (memory, a crash) would otherwise take every replica down in turn."""
        runs = job.attempts - 1
        job.status, job.finished_at = FAILED, time.time()
        job.error = {
            "code": "too_many_attempts",
            "message": f"the job's runner stopped {runs} times while running it (a replica or "
            "front end died); it is not started again (SERVE_JOB_MAX_ATTEMPTS)",
        }
        log.error("job %s: failed after %d runs that did not finish", job.id, runs)

    async def _renew(self, claim: Claim) -> None:
        interval = self.settings.job_claim_idle_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.store.renew(claim)
            except Exception:  # a Redis blip: the next renewal may succeed
                log.warning("job %s: could not renew the claim", claim.job.id)

    async def _run(self, job: Job, images: list[bytes]) -> None:
        start = time.perf_counter()
        try:
            self.plane.resolve(job.pipeline)
            results = []
            chunk = max(
                1, min(self.settings.max_images_per_request, self.settings.max_queue_images)
            )
            for offset in range(0, len(images), chunk):
                part = images[offset : offset + chunk]
                results.append(await self._chunk(job, part, offset))
        except (Abandoned, asyncio.CancelledError):
            raise
        except Exception as exc:
            # Whatever else the images met (the accelerator process could not read one, a
            # bug) fails this job with its reason: it would fail the same way on every retry.
            error = exc if isinstance(exc, ServeError) else InternalError.of(exc, "job", log)
            job.status, job.error = FAILED, {"code": error.code, "message": error.message}
        else:
            job.status = SUCCEEDED
            total_ms = 1000 * (time.perf_counter() - start)
            job.result = answer(InferResult.concat(results, total_ms))
        job.finished_at = time.time()

    async def _chunk(self, job: Job, images: list[bytes], offset: int) -> InferResult:
        """One chunk of a job's images; waits and retries while the pipeline cannot take it."""
        request = InferRequest(job.pipeline, images, top_k=job.top_k)

        async def attempt(_: int) -> InferResult:
            if self._stopping:
                raise Abandoned()
            try:
                return await self.plane.infer(request)
            except InvalidInput as exc:
                reason = exc.message.split(": ", 1)[-1]
                index = offset + int(exc.details.get("image", 0))
                raise JobFailed(f"image {index}: {reason}", exc.code) from None
            except ModelError as exc:
                raise JobFailed(f"the model failed on a batch: {exc}", "model_error") from None
            except NotReady:
                state = self.plane.resolve(job.pipeline).state
                if state == "failed":
                    raise JobFailed(
                        f"pipeline {job.pipeline} failed to load", "pipeline_failed"
                    ) from None
                if state in ("stopped", "draining"):
                    raise Abandoned() from None
                raise

        try:
            return await retry(
                attempt,
                tries=MAX_TRIES,
                backoff=CAPACITY_BACKOFF,
                retryable=lambda exc: isinstance(exc, WAIT_FOR),
            )
        except WAIT_FOR as exc:
            raise JobFailed(
                f"gave up after {MAX_TRIES} tries: {type(exc).__name__}: {exc}", "unavailable"
            ) from None

    async def _callback(self, job: Job) -> None:
        assert job.callback_url
        secret = self.settings.callback_secret.get_secret_value()
        body = json.dumps(job.public(), separators=(",", ":")).encode()
        result = await callbacks.deliver(
            job.callback_url,
            body,
            secret=secret,
            job_id=job.id,
            allowed_hosts=self.settings.callback_allowed_hosts,
            timeout_s=self.settings.callback_timeout_s,
            attempts=self.settings.callback_attempts,
            backoff_s=self.settings.callback_backoff_s,
        )
        job.callback = {
            "status": "delivered" if result.delivered else "failed",
            "attempts": result.attempts,
            "http_status": result.status or None,
            "last_error": result.last_error or None,
        }
        self.metrics.jobs.labels(
            "callback_delivered" if result.delivered else "callback_failed"
        ).inc()
