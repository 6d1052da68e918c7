"""A job runner's worker outlives the job it could not finish."""

from __future__ import annotations

import asyncio
import types

from service.errors import InternalError
from service.jobs.memory import MemoryJobStore
from service.jobs.record import FAILED, Job
from service.jobs.runner import JobRunner
from service.metrics import Metrics
from service.settings import Settings


class Plane:
    """What a job runner uses of the dataplane; each call raises the next of ``errors``."""

    def __init__(self, *errors: BaseException):
        self.fallback = types.SimpleNamespace(ready=True)
        self.errors = list(errors)

    def resolve(self, name: str) -> types.SimpleNamespace:
        return types.SimpleNamespace(state="ready")

    async def infer(self, request):
        raise self.errors.pop(0)


class FlakyStore(MemoryJobStore):
    """A store whose first save of a finished job fails, as Redis does in a blip."""

    def __init__(self) -> None:
        super().__init__(max_jobs=10, ttl_s=60)
        self.failed_saves = 0

    async def save(self, job) -> None:
        if job.finished and not self.failed_saves:
            self.failed_saves += 1
            raise ConnectionError("the store went away")
        await super().save(job)


async def _finish(runner: JobRunner, store: MemoryJobStore, job_id: str):
    for _ in range(200):
        job = await store.get(job_id)
        if job is not None and job.finished:
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish: {await store.get(job_id)}")


def test_jobs_that_meet_an_error_fail_with_it_and_the_worker_goes_on(caplog):
    async def run():
        store = MemoryJobStore(max_jobs=10, ttl_s=60)
        # The accelerator process's "cannot read it" is an InternalError; then a bug.
        plane = Plane(
            InternalError("the accelerator process cannot read it: bad shape"),
            RuntimeError("a bug"),
        )
        runner = JobRunner(store, plane, Settings(), Metrics(), workers=1)
        await runner.start()
        try:
            first = await runner.submit([b"jpeg"], 1, "default", None)
            second = await runner.submit([b"jpeg"], 1, "default", None)
            return await _finish(runner, store, first.id), await _finish(runner, store, second.id)
        finally:
            await runner.stop()

    first, second = asyncio.run(run())
    assert first.status == FAILED
    assert first.error == {
        "code": "internal_error",
        "message": "the accelerator process cannot read it: bad shape",
    }
    # A bug is not quoted to the client: its message names the log line that holds it.
    assert second.status == FAILED and second.error["code"] == "internal_error"
    assert "quote error id" in second.error["message"] and "a bug" not in second.error["message"]
    assert "a bug" in caplog.text


def test_a_worker_whose_save_fails_goes_on_to_the_next_job():
    async def run():
        store = FlakyStore()
        plane = Plane(InternalError("first"), InternalError("second"))
        runner = JobRunner(store, plane, Settings(), Metrics(), workers=1)
        await runner.start()
        try:
            await runner.submit([b"jpeg"], 1, "default", None)
            # The first job's result could not be saved; the worker takes the next one.
            nxt = await runner.submit([b"jpeg"], 1, "default", None)
            return await _finish(runner, store, nxt.id), store.failed_saves
        finally:
            await runner.stop()

    done, failed_saves = asyncio.run(run())
    assert failed_saves == 1
    assert done.status == FAILED and done.error["message"] == "second"


def test_a_job_started_more_than_the_most_attempts_fails_without_running():
    async def run():
        store = MemoryJobStore(max_jobs=10, ttl_s=60)
        plane = Plane(InternalError("ran"))  # one run: a second call would raise IndexError
        runner = JobRunner(store, plane, Settings(job_max_attempts=2), Metrics(), workers=1)
        # Jobs whose runners died once and twice before (the store counts each take).
        jobs = [
            Job(id=Job.new_id(), pipeline="default", top_k=1, images=1, attempts=n) for n in (1, 2)
        ]
        for job in jobs:
            await store.submit(job, [b"jpeg"])
        await runner.start()
        try:
            return [await _finish(runner, store, job.id) for job in jobs], plane.errors
        finally:
            await runner.stop()

    (second, third), left = asyncio.run(run())
    assert left == []
    assert second.status == FAILED and second.attempts == 2 and second.error["message"] == "ran"
    assert third.status == FAILED and third.attempts == 3
    assert third.error["code"] == "too_many_attempts"
    assert "stopped 2 times" in third.error["message"]
