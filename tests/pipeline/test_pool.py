"""The preprocessing pool: spawned workers fed through shared memory by the event loop, lower CPU
priority, a dead worker replaced on its own and its item retried once."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from multiprocessing import resource_tracker

import numpy as np
import pytest
from helpers import encode, photo_like

from service.pipeline import pool as pool_module
from service.pipeline.pool import PoolClosed, PreprocessPool, WorkerLost
from service.pipeline.preprocess import ImageError, PreprocessConfig, decode

CFG = PreprocessConfig(size=(32, 32))


@pytest.fixture
def pool():
    p = PreprocessPool(CFG, workers=2, niceness=5)
    p.start()
    yield p
    p.close()


def _nice(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _state(pid) in ("gone", "Z"):
            return True
        time.sleep(0.05)
    return False


def test_workers_are_spawned_and_niced(pool):
    pids = pool.worker_pids()
    assert len(pids) == 2 and os.getpid() not in pids
    assert all(_nice(pid) == _nice(os.getpid()) + 5 for pid in pids)


def test_workers_never_import_tensorflow(pool):
    for pid in pool.worker_pids():
        with open(f"/proc/{pid}/maps") as f:
            assert "tensorflow" not in f.read()


def test_decodes_like_decode_in_process_and_reports_bad_images(pool):
    image = encode(photo_like(40, 60))

    async def go():
        good = await pool.run(image)
        with pytest.raises(ImageError) as bad:
            await pool.run(b"not an image")
        with pytest.raises(ImageError) as empty:
            await pool.run(b"")
        return good, bad.value.code, empty.value.code

    good, bad, empty = asyncio.run(go())
    np.testing.assert_array_equal(good.pixels, decode(image, CFG).pixels)
    assert good.pixels.flags.writeable and good.source_size == (60, 40) and good.seconds > 0
    assert (bad, empty) == ("not_an_image", "empty")


def test_items_are_passed_in_shared_memory_slots(pool):
    slots = [(w.slot_in, w.slot_out) for w in pool._workers]
    assert all(s_in is not None and s_out is not None for s_in, s_out in slots)
    assert all(os.path.exists(f"/dev/shm/{s.name}") for pair in slots for s in pair)
    pool.close()
    assert not any(os.path.exists(f"/dev/shm/{s.name}") for pair in slots for s in pair)


def _concurrent(pool, images):
    async def go():
        return await asyncio.gather(*(pool.run(im) for im in images))

    return asyncio.run(go())


@pytest.mark.parametrize("shared_memory", [True, False])
def test_payloads_larger_than_a_slot_and_pipe_only_pools(monkeypatch, shared_memory):
    """An image bigger than the input slot (or any image, without shared memory) and a cpu
    stage's output bigger than the output slot travel through the pipe, with the same result."""
    monkeypatch.setattr(pool_module, "INPUT_SLOT_BYTES", 2048)
    p = PreprocessPool(CFG, workers=2, shared_memory=shared_memory)
    p.start()
    try:
        assert all((w.slot_in is not None) == shared_memory for w in p._workers)
        images = [encode(photo_like(40 * (1 + i % 2), 60 * (1 + i % 2), seed=i)) for i in range(6)]
        assert any(len(im) > 2048 for im in images) and any(len(im) <= 2048 for im in images)
        for image, got in zip(images, _concurrent(p, images), strict=True):
            np.testing.assert_array_equal(got.pixels, decode(image, CFG).pixels)
        big = np.arange(300_000, dtype=np.float32).reshape(100, 3000)  # 1.2 MB each way

        async def apply():
            return await p.apply("helpers:double", big)

        out, seconds = asyncio.run(apply())
        np.testing.assert_array_equal(out, big * 2)
        assert out.dtype == np.float32 and seconds >= 0
    finally:
        p.close()


def test_a_busy_worker_holds_no_queue(pool):
    """A worker holds one item at a time: a slow item never delays the next image."""

    async def go():
        slow = asyncio.ensure_future(pool.apply("helpers:hold", np.array([1.5])))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        for _ in range(5):
            await pool.run(encode(photo_like(40, 60)))
        fast_s = time.monotonic() - started
        await slow
        return fast_s

    assert asyncio.run(go()) < 1.0


def test_a_killed_idle_worker_is_replaced_and_the_pool_keeps_working(pool):
    restarts = []
    pool._on_restart = lambda: restarts.append(1)
    old = pool.worker_pids()
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    assert all(_gone(pid) for pid in old)
    results = _concurrent(pool, [encode(photo_like(40, 60, seed=i)) for i in range(4)])
    assert all(r.pixels.shape == (32, 32, 3) for r in results)
    assert len(restarts) == 2
    new = pool.worker_pids()
    assert len(new) == 2 and not set(new) & set(old)


def test_an_item_whose_worker_dies_is_retried_once_on_another(pool):
    """SIGKILL of the worker holding an item: the item runs again on the other worker and
    succeeds; that worker is untouched and the dead one alone is replaced."""
    restarts = []
    pool._on_restart = lambda: restarts.append(1)

    async def go():
        item = asyncio.ensure_future(pool.apply("helpers:hold", np.array([1.0])))
        await asyncio.sleep(0.2)
        (busy,) = [w for w in pool._workers if w.task is not None]
        other = next(w for w in pool._workers if w is not busy)
        dead = busy.process.pid
        os.kill(dead, signal.SIGKILL)
        out, seconds = await item
        return dead, other, out, seconds

    dead, other, out, seconds = asyncio.run(go())
    assert list(out) == [other.process.pid] and seconds > 0  # it ran on the other worker
    assert other.process.pid in pool.worker_pids() and dead not in pool.worker_pids()
    assert len(restarts) == 1 and len(pool.worker_pids()) == 2
    image = encode(photo_like(40, 60))
    assert all(r.pixels.shape == (32, 32, 3) for r in _concurrent(pool, [image] * 4))


def test_an_item_that_kills_two_workers_fails_and_the_pool_survives(pool):
    restarts = []
    pool._on_restart = lambda: restarts.append(1)

    async def go():
        with pytest.raises(WorkerLost):
            await pool.apply("helpers:crash_worker", np.zeros(4, np.float32))
        return await pool.run(encode(photo_like(40, 60)))

    assert asyncio.run(go()).pixels.shape == (32, 32, 3)
    assert len(restarts) == 2 and len(pool.worker_pids()) == 2


def test_an_item_through_the_pipe_that_kills_workers(monkeypatch):
    """The same with a payload larger than the slot, written to the pipe by a thread."""
    monkeypatch.setattr(pool_module, "INPUT_SLOT_BYTES", 2048)
    resource_tracker.ensure_running()  # its pipe lives as long as this process
    fds = len(os.listdir("/proc/self/fd"))
    p = PreprocessPool(CFG, workers=2)
    p.start()
    try:

        async def go():
            with pytest.raises(WorkerLost):
                await p.apply("helpers:crash_worker", np.zeros(100_000, np.float32))
            out, _ = await p.apply("helpers:double", np.ones(100_000, np.float32))
            return out

        assert asyncio.run(go()).sum() == 200_000
        assert len(p.worker_pids()) == 2
    finally:
        p.close()
    assert len(os.listdir("/proc/self/fd")) <= fds, "pipes of dead or closed workers leaked"


def test_cpu_stage_outputs_keep_their_shape_and_dtype(pool):
    async def go():
        scalar, _ = await pool.apply("helpers:total", np.ones((3, 4), np.float32))
        grid, _ = await pool.apply("helpers:double", np.ones((2, 3, 5), np.float64))
        return scalar, grid

    scalar, grid = asyncio.run(go())
    assert scalar.shape == () and float(scalar) == 12.0
    assert grid.shape == (2, 3, 5) and grid.dtype == np.float32 and grid.sum() == 60.0


def test_worker_errors_come_back_as_their_own_exceptions(pool):
    async def go():
        with pytest.raises(ImportError, match="cannot import"):
            await pool.apply("helpers:no_such_function", np.zeros(4, np.float32))

    asyncio.run(go())


def test_a_cancelled_waiting_item_never_runs(pool):
    """An item whose request gave up while it waited for a worker is skipped."""

    async def go():
        sleeps = [
            asyncio.ensure_future(pool.apply("helpers:hold", np.array([0.5]))) for _ in range(2)
        ]
        await asyncio.sleep(0.05)
        doomed = asyncio.ensure_future(pool.apply("helpers:hold", np.array([5.0])))
        await asyncio.sleep(0.05)
        doomed.cancel()
        await asyncio.gather(*sleeps)
        await asyncio.sleep(0.05)
        return [w.task for w in pool._workers], pool.pending, len(pool._waiting)

    held, pending, waiting = asyncio.run(go())
    assert held == [None, None] and pending == 0 and waiting == 0


def test_close_fails_waiting_items_and_stops_the_workers():
    p = PreprocessPool(CFG, workers=1)
    p.start()
    (pid,) = p.worker_pids()

    async def go():
        held = asyncio.ensure_future(p.apply("helpers:hold", np.array([0.3])))
        waiting = asyncio.ensure_future(p.run(encode(photo_like(40, 60))))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(p.close)  # from another thread, as Pipeline.stop does
        return await asyncio.gather(held, waiting, return_exceptions=True)

    results = asyncio.run(go())
    assert all(isinstance(r, PoolClosed) for r in results)
    assert _gone(pid)

    async def after():
        await p.run(b"x")

    with pytest.raises(PoolClosed):
        asyncio.run(after())


def test_no_room_in_dev_shm_means_pipes_not_a_crash():
    """posix_fallocate reserves the slot's pages: a /dev/shm without room is refused at once
    (no SIGBUS on first write), and that worker uses its pipe."""
    assert pool_module._shared_memory(1 << 50) is None


def test_workers_die_with_a_killed_server(tmp_path):
    """A server killed by SIGKILL (an OOM kill) leaves no orphaned worker behind, and its
    shared-memory slots are removed (by multiprocessing's resource tracker)."""
    script = tmp_path / "parent.py"
    script.write_text(
        "from service.pipeline.pool import PreprocessPool\n"
        "from service.pipeline.preprocess import PreprocessConfig\n"
        "if __name__ == '__main__':\n"
        "    pool = PreprocessPool(PreprocessConfig(size=(8, 8)), workers=2)\n"
        "    pool.start()\n"
        "    names = [s.name for w in pool._workers for s in (w.slot_in, w.slot_out)]\n"
        "    print(*pool.worker_pids(), flush=True)\n"
        "    print(*names, flush=True)\n"
        "    import time; time.sleep(60)\n"
    )
    with open(tmp_path / "stderr", "wb") as stderr:  # the tracker's "leaked" warning
        parent = subprocess.Popen(
            [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        pids = [int(p) for p in parent.stdout.readline().split()]
        names = parent.stdout.readline().split()
        assert len(pids) == 2 and len(names) == 4
        assert all(os.path.exists(f"/dev/shm/{n}") for n in names)
        parent.kill()
        parent.wait()
    assert all(_gone(pid) for pid in pids), "orphaned workers"
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/dev/shm/{n}") for n in names) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(os.path.exists(f"/dev/shm/{n}") for n in names), "leaked shared memory"
