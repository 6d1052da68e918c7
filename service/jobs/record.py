"""A job's record and the interface every job store implements."""

from __future__ import annotations

import abc
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import JobConflict

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)


@dataclass
class Job:
    """One asynchronous job. Times are Unix seconds; the API shows them as ISO 8601."""

    id: str
    pipeline: str
    top_k: int
    images: int
    status: str = QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    attempts: int = 0  # times a replica started it (more than 1: taken over after a crash)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    callback_url: str | None = None
    callback: dict[str, Any] | None = None  # {"status": pending|delivered|failed, ...}

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Job:
        return cls(**json.loads(text))

    def cancelled(self, ttl_s: float) -> Job:
        """This queued job, cancelled now; raises ``JobConflict`` in any other state."""
        if self.status != QUEUED:
            raise JobConflict.of(self.id, self.status)
        self.status = CANCELLED
        self.finished_at = time.time()
        self.expires_at = self.finished_at + ttl_s
        return self

    def public(self) -> dict[str, Any]:
        """What ``GET /v1/jobs/{id}`` answers."""
        body: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "pipeline": self.pipeline,
            "images": self.images,
            "top_k": self.top_k,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "expires_at": iso(self.expires_at),
            "attempts": self.attempts,
        }
        if self.result is not None:
            body["result"] = self.result
        if self.error is not None:
            body["error"] = self.error
        if self.callback_url:
            body["callback"] = {"url": self.callback_url, **(self.callback or {})}
        return body


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Claim:
    """A job a replica has taken, with its images; ``token`` is the store's handle on it."""

    job: Job
    images: list[bytes]
    token: Any = None


class JobStore(abc.ABC):
    """Where jobs wait, run and keep their results until they expire.

    Delivery is at least once: a job whose replica dies is run again by another (Redis).
    ``durable``: jobs survive this process (a job interrupted by a stop is left for another
    replica instead of being failed).
    """

    durable = False

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and prepare (the Redis consumer group)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abc.abstractmethod
    async def submit(self, job: Job, images: list[bytes]) -> None:
        """Store a queued job and its images; raises ``StoreFull``."""

    @abc.abstractmethod
    async def get(self, job_id: str) -> Job | None:
        """The job, or None when unknown or expired."""

    @abc.abstractmethod
    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job; None when unknown; raises ``JobConflict`` when not queued."""

    @abc.abstractmethod
    async def take(self, timeout_s: float) -> Claim | None:
        """The next job to work on, marked running (or a finished one whose callback is still
        owed); None when nothing came within ``timeout_s``."""

    @abc.abstractmethod
    async def renew(self, claim: Claim) -> None:
        """Tell the store this replica still works on ``claim`` (a heartbeat)."""

    @abc.abstractmethod
    async def save(self, job: Job) -> None:
        """Write the job's state; a finished job's images go and its expiry is set."""

    @abc.abstractmethod
    async def ack(self, claim: Claim) -> None:
        """This replica is done with ``claim`` (result saved, callback delivered or given up)."""
