"""The cpu stages' worker pool: spawned workers fed through shared memory by the event loop,
lower CPU priority, a dead worker replaced on its own and its item retried once."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from multiprocessing import resource_tracker

import numpy as np
import pytest

from service.engine import worker_pool as pool_module
from service.engine.worker_pool import PoolClosed, WorkerPool
from service.errors import InvalidInput, WorkerLost

H = "tests.support.helpers"  # the cpu-stage functions the workers import


def item(seed: int = 0, size: int = 3000) -> np.ndarray:
    return np.random.default_rng(seed).random(size, dtype=np.float32)


@pytest.fixture
def pool():
    p = WorkerPool(workers=2, niceness=5)
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


def test_applies_the_function_like_in_process_and_its_errors_keep_their_codes(pool):
    x = item()

    async def go():
        out, seconds = await pool.apply(f"{H}:double", x)
        with pytest.raises(InvalidInput) as refused:  # a ServeError crosses with its code
            await pool.apply(f"{H}:refuse", x)
        return out, seconds, refused.value

    out, seconds, refused = asyncio.run(go())
    np.testing.assert_array_equal(out, x * 2)
    assert out.flags.writeable and seconds > 0
    assert (refused.code, refused.message, refused.details) == (
        "refused",
        "refused on purpose",
        {"size": 3000},
    )


def test_items_are_passed_in_shared_memory_slots(pool):
    slots = [(w.slot_in, w.slot_out) for w in pool._workers]
    assert all(s_in is not None and s_out is not None for s_in, s_out in slots)
    assert all(os.path.exists(f"/dev/shm/{s.name}") for pair in slots for s in pair)
    pool.close()
    assert not any(os.path.exists(f"/dev/shm/{s.name}") for pair in slots for s in pair)


def _concurrent(pool, items):
    async def go():
        return await asyncio.gather(*(pool.apply(f"{H}:double", x) for x in items))

    return [out for out, _ in asyncio.run(go())]


@pytest.mark.parametrize("shared_memory", [True, False])
def test_payloads_larger_than_a_slot_and_pipe_only_pools(monkeypatch, shared_memory):
    """An item bigger than the slots (or any item, without shared memory) travels through the
    pipe, with the same result."""
    monkeypatch.setattr(pool_module, "SLOT_BYTES", 2048)
    p = WorkerPool(workers=2, shared_memory=shared_memory)
    p.start()
    try:
        assert all((w.slot_in is not None) == shared_memory for w in p._workers)
        items = [item(i, 200 * (1 + 3 * (i % 2))) for i in range(6)]  # 800 or 3200 bytes
        for x, got in zip(items, _concurrent(p, items), strict=True):
            np.testing.assert_array_equal(got, x * 2)
        big = np.arange(300_000, dtype=np.float32).reshape(100, 3000)  # 1.2 MB each way

        async def apply():
            return await p.apply(f"{H}:double", big)

        out, seconds = asyncio.run(apply())
        np.testing.assert_array_equal(out, big * 2)
        assert out.dtype == np.float32 and seconds >= 0
    finally:
        p.close()


def test_a_busy_worker_holds_no_queue(pool):
    """A worker holds one item at a time: a slow item never delays the next one."""

    async def go():
        slow = asyncio.ensure_future(pool.apply(f"{H}:hold", np.array([1.5])))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        for _ in range(5):
            await pool.apply(f"{H}:double", item())
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
    items = [item(i) for i in range(4)]
    for x, got in zip(items, _concurrent(pool, items), strict=True):
        np.testing.assert_array_equal(got, x * 2)
    assert len(restarts) == 2
    new = pool.worker_pids()
    assert len(new) == 2 and not set(new) & set(old)


def test_an_item_whose_worker_dies_is_retried_once_on_another(pool):
    """SIGKILL of the worker holding an item: the item runs again on the other worker and
    succeeds; that worker is untouched and the dead one alone is replaced."""
    restarts = []
    pool._on_restart = lambda: restarts.append(1)

    async def go():
        item = asyncio.ensure_future(pool.apply(f"{H}:hold", np.array([1.0])))
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
    assert all(r.shape == (3000,) for r in _concurrent(pool, [item()] * 4))


def test_an_item_that_kills_two_workers_fails_and_the_pool_survives(pool):
    restarts = []
    pool._on_restart = lambda: restarts.append(1)

    async def go():
        with pytest.raises(WorkerLost):
            await pool.apply(f"{H}:crash_worker", np.zeros(4, np.float32))
        return await pool.apply(f"{H}:double", item())

    assert asyncio.run(go())[0].shape == (3000,)
    assert len(restarts) == 2 and len(pool.worker_pids()) == 2


def test_an_item_through_the_pipe_that_kills_workers(monkeypatch):
    """The same with a payload larger than the slot, written to the pipe by a thread."""
    monkeypatch.setattr(pool_module, "SLOT_BYTES", 2048)
    resource_tracker.ensure_running()  # its pipe lives as long as this process
    fds = len(os.listdir("/proc/self/fd"))
    p = WorkerPool(workers=2)
    p.start()
    try:

        async def go():
            with pytest.raises(WorkerLost):
                await p.apply(f"{H}:crash_worker", np.zeros(100_000, np.float32))
            out, _ = await p.apply(f"{H}:double", np.ones(100_000, np.float32))
            return out

        assert asyncio.run(go()).sum() == 200_000
        assert len(p.worker_pids()) == 2
    finally:
        p.close()
    assert len(os.listdir("/proc/self/fd")) <= fds, "pipes of dead or closed workers leaked"


def test_cpu_stage_outputs_keep_their_shape_and_dtype(pool):
    async def go():
        scalar, _ = await pool.apply(f"{H}:total", np.ones((3, 4), np.float32))
        grid, _ = await pool.apply(f"{H}:double", np.ones((2, 3, 5), np.float64))
        return scalar, grid

    scalar, grid = asyncio.run(go())
    assert scalar.shape == () and float(scalar) == 12.0
    assert grid.shape == (2, 3, 5) and grid.dtype == np.float32 and grid.sum() == 60.0


def test_worker_errors_come_back_as_their_own_exceptions(pool):
    async def go():
        with pytest.raises(ImportError, match="cannot import"):
            await pool.apply(f"{H}:no_such_function", np.zeros(4, np.float32))

    asyncio.run(go())


def test_a_cancelled_waiting_item_never_runs(pool):
    """An item whose request gave up while it waited for a worker is skipped."""

    async def go():
        sleeps = [asyncio.ensure_future(pool.apply(f"{H}:hold", np.array([0.5]))) for _ in range(2)]
        await asyncio.sleep(0.05)
        doomed = asyncio.ensure_future(pool.apply(f"{H}:hold", np.array([5.0])))
        await asyncio.sleep(0.05)
        doomed.cancel()
        await asyncio.gather(*sleeps)
        await asyncio.sleep(0.05)
        return [w.task for w in pool._workers], pool.pending, len(pool._waiting)

    held, pending, waiting = asyncio.run(go())
    assert held == [None, None] and pending == 0 and waiting == 0


def test_close_fails_waiting_items_and_stops_the_workers():
    p = WorkerPool(workers=1)
    p.start()
    (pid,) = p.worker_pids()

    async def go():
        held = asyncio.ensure_future(p.apply(f"{H}:hold", np.array([0.3])))
        waiting = asyncio.ensure_future(p.apply(f"{H}:double", item()))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(p.close)  # from another thread, as Pipeline.stop does
        return await asyncio.gather(held, waiting, return_exceptions=True)

    results = asyncio.run(go())
    assert all(isinstance(r, PoolClosed) for r in results)
    assert _gone(pid)

    async def after():
        await p.apply(f"{H}:double", item())

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
        "from service.engine.worker_pool import WorkerPool\n"
        "if __name__ == '__main__':\n"
        "    pool = WorkerPool(workers=2)\n"
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
