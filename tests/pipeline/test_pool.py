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


def test_workers_die_with_a_killed_server(tmp_path):
    """A server killed by SIGKILL (an OOM kill) leaves no orphaned worker behind."""
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "from service.pipeline.pool import PreprocessPool\n"
        "from service.pipeline.preprocess import PreprocessConfig\n"
        "if __name__ == '__main__':\n"
        "    pool = PreprocessPool(PreprocessConfig(size=(8, 8)), workers=2)\n"
        "    pool.start()\n"
        "    print(*pool.worker_pids(), flush=True)\n"
        "    import time; time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if os.path.exists(f"/proc/{p}") and _state(p) != "Z"]
        time.sleep(0.05)
    assert not alive, f"orphaned workers {alive}"


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"
