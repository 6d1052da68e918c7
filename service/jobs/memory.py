"""The in-memory job store: one replica, bounded, finished jobs expire after a TTL.

Jobs live and die with the pod (with several front-end processes the supervisor holds the store
and serves it to them, ``jobs/shared.py``): use the Redis store when several replicas serve, or
when an accepted job must survive a restart.
"""

from __future__ import annotations

import asyncio
import collections
import time

from ..errors import StoreFull
from .record import QUEUED, RUNNING, Claim, Job, JobStore


class MemoryJobStore(JobStore):
    """Args:
    max_jobs: jobs held at once, waiting, running and finished; past it the oldest
        finished ones make room, and when none is finished ``submit`` raises ``StoreFull``.
    ttl_s: how long a finished job (its result) stays readable.
    """

    def __init__(self, max_jobs: int, ttl_s: float):
        self.max_jobs = max_jobs
        self.ttl_s = ttl_s
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._images: dict[str, list[bytes]] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()

    def _expire(self) -> None:
        now = time.time()
        for job_id in [j.id for j in self._jobs.values() if j.expires_at and j.expires_at <= now]:
            del self._jobs[job_id]

    def _make_room(self) -> None:
        self._expire()
        if len(self._jobs) < self.max_jobs:
            return
        for job in list(self._jobs.values()):  # oldest first
            if job.finished:
                del self._jobs[job.id]
                return
        raise StoreFull(
            f"{len(self._jobs)} jobs are queued or running; the limit is {self.max_jobs}; retry"
        )

    async def submit(self, job: Job, images: list[bytes]) -> None:
        self._make_room()
        self._jobs[job.id] = job
        self._images[job.id] = images
        self._queue.put_nowait(job.id)

    async def get(self, job_id: str) -> Job | None:
        self._expire()
        return self._jobs.get(job_id)

    async def cancel(self, job_id: str) -> Job | None:
        job = await self.get(job_id)
        if job is not None:
            await self.save(job.cancelled(self.ttl_s))
        return job

    async def take(self, timeout_s: float) -> Claim | None:
        try:
            job_id = await asyncio.wait_for(self._queue.get(), timeout_s)
        except TimeoutError:
            return None
        job = self._jobs.get(job_id)
        if job is None or job.status != QUEUED:  # cancelled or expired meanwhile
            self._images.pop(job_id, None)
            return None
        job.status = RUNNING
        job.started_at = time.time()
        job.attempts += 1
        return Claim(job, self._images.get(job_id, []))

    async def renew(self, claim: Claim) -> None:
        return None

    def requeue(self, job_id: str) -> None:
        """A running job whose runner went away (its front end died): queued again."""
        job = self._jobs.get(job_id)
        if job is not None and job.status == RUNNING:
            job.status = QUEUED
            self._queue.put_nowait(job_id)

    async def save(self, job: Job) -> None:
        if job.finished:
            job.expires_at = (job.finished_at or time.time()) + self.ttl_s
            self._images.pop(job.id, None)
        if job.id in self._jobs:
            self._jobs[job.id] = job

    async def ack(self, claim: Claim) -> None:
        return None
