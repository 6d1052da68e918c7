"""The Redis job store: jobs shared by every replica, surviving the death of any of them.

Layout (``prefix`` defaults to ``serve:jobs:``):

* ``{prefix}job:{id}``: a hash, ``status`` and ``job`` (the record as JSON). No expiry until
  the job finishes; then ``SERVE_JOB_TTL_S``.
* ``{prefix}images:{id}``: a list of the encoded images, deleted when the job finishes.
* ``{prefix}stream``: a Redis Stream of job ids, read through the consumer group ``workers``.

A replica takes an entry with ``XREADGROUP``; the entry stays in the group's pending list
until the replica acknowledges it (``XACK``), after the result is saved and the callback
delivered. While it works, it renews its claim every third of ``SERVE_JOB_CLAIM_IDLE_S``
(``XCLAIM`` with ``JUSTID`` resets the entry's idle time). A replica that dies stops renewing;
once the entry has been idle that long, another replica takes it over with ``XAUTOCLAIM`` and
runs the job again. Every write of an accepted job happens in one ``MULTI`` with its ``XADD``,
so an accepted job is never lost while Redis is up (and, with Redis persistence, across its
restarts).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

from ..errors import JobConflict, StoreFull, StoreUnavailable
from .record import (
    CANCELLED,
    QUEUED,
    RUNNING,
    Claim,
    Job,
    JobStore,
)

log = logging.getLogger(__name__)

GROUP = "workers"
# Compare-and-set of a job's status: KEYS[1] the job hash; ARGV expected, new status, new JSON.
_TRANSITION = """
if redis.call('HGET', KEYS[1], 'status') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'job', ARGV[3])
  return 1
end
return 0
"""


@contextlib.contextmanager
def _reachable() -> Iterator[None]:
    """Redis connection failures as ``StoreUnavailable`` (the API answers 503)."""
    from redis.exceptions import ConnectionError, TimeoutError

    try:
        yield
    except (ConnectionError, TimeoutError) as exc:
        raise StoreUnavailable(f"the job store (Redis) is unreachable: {exc}; retry") from None


class RedisJobStore(JobStore):
    """Args:
    url: ``redis://host:port/db``.
    max_jobs: jobs waiting or running at once (the stream's length); past it ``StoreFull``.
    ttl_s: how long a finished job stays readable.
    claim_idle_s: a job whose replica has not renewed its claim for this long is taken over.
    prefix: key prefix (several services can share one Redis).
    """

    durable = True

    def __init__(
        self,
        url: str,
        *,
        max_jobs: int,
        ttl_s: float,
        claim_idle_s: float,
        prefix: str = "serve:jobs:",
    ):
        import redis.asyncio as aioredis  # the `redis` extra

        self.redis: Any = aioredis.from_url(url, decode_responses=False)
        self.max_jobs = max_jobs
        self.ttl_s = ttl_s
        self.claim_idle_s = claim_idle_s
        self.prefix = prefix
        self.stream = f"{prefix}stream"
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._transition = self.redis.register_script(_TRANSITION)
        self._last_autoclaim = 0.0
        self.claimed = 0  # jobs taken over from replicas that stopped renewing

    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _images_key(self, job_id: str) -> str:
        return f"{self.prefix}images:{job_id}"

    async def start(self) -> None:
        from redis.exceptions import ResponseError

        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        log.info("job store: Redis stream %s, consumer %s", self.stream, self.consumer)

    async def close(self) -> None:
        await self.redis.aclose()

    async def submit(self, job: Job, images: list[bytes]) -> None:
        with _reachable():
            await self._submit(job, images)

    async def _submit(self, job: Job, images: list[bytes]) -> None:
        if await self.redis.xlen(self.stream) >= self.max_jobs:
            raise StoreFull(f"{self.max_jobs} jobs are queued or running; the limit; retry")
        async with self.redis.pipeline(transaction=True) as tx:
            tx.hset(self._job_key(job.id), mapping={"status": job.status, "job": job.to_json()})
            if images:
                tx.rpush(self._images_key(job.id), *images)
            tx.xadd(self.stream, {"id": job.id})
            await tx.execute()

    async def get(self, job_id: str) -> Job | None:
        with _reachable():
            raw = await self.redis.hget(self._job_key(job_id), "job")
        return Job.from_json(raw) if raw else None

    async def cancel(self, job_id: str) -> Job | None:
        with _reachable():
            return await self._cancel(job_id)

    async def _cancel(self, job_id: str) -> Job | None:
        job = await self.get(job_id)
        if job is None:
            return None
        if not await self._cas(job.cancelled(self.ttl_s), QUEUED):
            current = await self.get(job_id)
            raise JobConflict.of(job_id, current.status if current else "expired")
        await self._finish_keys(job.id)
        return job

    async def _cas(self, job: Job, expected: str) -> bool:
        done = await self._transition(
            keys=[self._job_key(job.id)], args=[expected, job.status, job.to_json()]
        )
        return bool(done)

    async def _finish_keys(self, job_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as tx:
            tx.expire(self._job_key(job_id), max(1, int(self.ttl_s)))
            tx.delete(self._images_key(job_id))
            await tx.execute()

    async def _next_entry(self, timeout_s: float) -> tuple[bytes, bytes, bool] | None:
        """(entry id, job id, taken over?) from the pending entries of dead replicas first."""
        now = time.monotonic()
        if now - self._last_autoclaim >= min(1.0, self.claim_idle_s / 2):
            self._last_autoclaim = now
            reply = await self.redis.xautoclaim(
                self.stream,
                GROUP,
                self.consumer,
                min_idle_time=int(self.claim_idle_s * 1000),
                start_id="0-0",
                count=1,
            )
            entries = reply[1]
            if entries:
                entry_id, fields = entries[0]
                if fields:
                    return entry_id, fields[b"id"], True
                await self.redis.xack(self.stream, GROUP, entry_id)  # deleted meanwhile
        reply = await self.redis.xreadgroup(
            GROUP,
            self.consumer,
            {self.stream: ">"},
            count=1,
            block=max(1, int(timeout_s * 1000)),
        )
        if not reply:
            return None
        entry_id, fields = reply[0][1][0]
        return entry_id, fields[b"id"], False

    async def take(self, timeout_s: float) -> Claim | None:
        found = await self._next_entry(timeout_s)
        if found is None:
            return None
        entry_id, raw_id, taken_over = found
        job_id = raw_id.decode()
        job = await self.get(job_id)
        claim = Claim(job, [], entry_id) if job else None
        if job is None or job.status == CANCELLED:  # expired, deleted or cancelled
            await self._drop(entry_id)
            return None
        if job.finished:  # its replica saved the result and died before acknowledging
            return claim
        if job.status == RUNNING and not taken_over:  # pragma: no cover - a duplicate entry
            return None
        expected = job.status
        job.status = RUNNING
        job.started_at = time.time()
        job.attempts += 1
        if not await self._cas(job, expected):
            return None  # cancelled in between; the entry is dropped on its next read
        if taken_over:
            self.claimed += 1
            log.warning(
                "job %s: taken over from a replica that stopped (attempt %d)", job_id, job.attempts
            )
        images = await self.redis.lrange(self._images_key(job_id), 0, -1)
        return Claim(job, list(images), entry_id)

    async def renew(self, claim: Claim) -> None:
        await self.redis.xclaim(self.stream, GROUP, self.consumer, 0, [claim.token], justid=True)

    async def save(self, job: Job) -> None:
        if job.finished and job.expires_at is None:
            job.expires_at = (job.finished_at or time.time()) + self.ttl_s
        await self.redis.hset(
            self._job_key(job.id), mapping={"status": job.status, "job": job.to_json()}
        )
        if job.finished:
            await self._finish_keys(job.id)

    async def ack(self, claim: Claim) -> None:
        await self._drop(claim.token)

    async def _drop(self, entry_id: Any) -> None:
        async with self.redis.pipeline(transaction=True) as tx:
            tx.xack(self.stream, GROUP, entry_id)
            tx.xdel(self.stream, entry_id)
            await tx.execute()
