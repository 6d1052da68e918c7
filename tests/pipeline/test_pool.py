"""The preprocessing pool: spawned workers, lower CPU priority, rebuilt when a worker dies."""

import asyncio
import os
import signal

import pytest
from helpers import encode, photo_like

from service.pipeline.pool import PreprocessPool, WorkerLost
from service.pipeline.preprocess import ImageError, PreprocessConfig


@pytest.fixture
def pool():
    p = PreprocessPool(PreprocessConfig(size=(32, 32)), workers=2, niceness=5)
    p.start()
    yield p
    p.close()


def _nice(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


def test_workers_are_spawned_and_niced(pool):
    pids = pool.worker_pids()
    assert len(pids) == 2 and os.getpid() not in pids
    assert all(_nice(pid) == _nice(os.getpid()) + 5 for pid in pids)


def test_workers_never_import_tensorflow(pool):
    for pid in pool.worker_pids():
        with open(f"/proc/{pid}/maps") as f:
            assert "tensorflow" not in f.read()


def test_decodes_and_reports_bad_images(pool):
    async def go():
        good = await pool.run(encode(photo_like(40, 60)))
        with pytest.raises(ImageError):
            await pool.run(b"not an image")
        return good

    assert asyncio.run(go()).pixels.shape == (32, 32, 3)


def test_a_killed_worker_is_replaced_and_the_pool_keeps_working(pool):
    restarts = []
    pool._on_restart = lambda: restarts.append(1)
    for pid in pool.worker_pids():
        os.kill(pid, signal.SIGKILL)

    async def go():
        try:
            return await pool.run(encode(photo_like(40, 60)))
        except WorkerLost:  # the retry may also land on the broken pool; a third try works
            return await pool.run(encode(photo_like(40, 60)))

    assert asyncio.run(go()).pixels.shape == (32, 32, 3)
    assert restarts
