"""Runner instances (Triton's instance group): several batches of one model stage at once."""

import asyncio
import math
import os
import threading
import time

import numpy as np
import pytest

from service.engine.batcher import DynamicBatcher
from service.errors import ModelError, ShuttingDown
from service.metrics import BusyWindow, Metrics
from service.model.runner import ModelRunner
from service.model.threads import MAX_AUTO_CPU_INSTANCES, plan_threads
from tests.support.helpers import far, run_with


class Instance:
    """One stand-in runner instance: a fixed cost per batch (GIL released); records each batch
    as (instance, size, start, end) in the log it shares with its siblings."""

    def __init__(self, name: int, log: list, seconds: float = 0.05):
        self.name, self.log, self.seconds = name, log, seconds
        self.gate = threading.Event()
        self.gate.set()
        self.fail_next = False

    def __call__(self, payloads):
        assert self.gate.wait(10), "the test never opened the gate"
        start = time.monotonic()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        time.sleep(self.seconds)
        self.log.append((self.name, len(payloads), start, time.monotonic()))
        out = np.stack([p.astype(np.float32) * 2 for p in payloads])
        return out, len(payloads), self.seconds


def group(count: int, seconds: float = 0.05, **kwargs):
    log: list = []
    instances = [Instance(i, log, seconds) for i in range(count)]
    kwargs.setdefault("max_batch_size", 8)
    batcher = DynamicBatcher("model", instances, metrics=Metrics(), **kwargs)
    return batcher, instances, log


async def burst(batcher, instances, count: int) -> list:
    """``count`` items submitted while every instance is held, then released together."""
    for inst in instances:
        inst.gate.clear()
    futures = [batcher.submit(np.array([float(i)]), far()) for i in range(count)]
    await asyncio.sleep(0.05)
    for inst in instances:
        inst.gate.set()
    return await asyncio.gather(*futures)


def test_waiting_work_splits_over_idle_instances_that_run_at_once():
    batcher, instances, log = group(2, seconds=0.3)

    async def go():
        return await burst(batcher, instances, 8)

    results = asyncio.run(run_with(batcher, go()))
    assert [r[0].tolist() for r in results] == [[2.0 * i] for i in range(8)]
    # Each takes its share of the eight: half, not all of them for the first instance.
    assert sorted((name, size) for name, size, _, _ in log) == [(0, 4), (1, 4)], log
    (_, _, start_a, end_a), (_, _, start_b, end_b) = log
    assert start_b < end_a and start_a < end_b  # the two batches overlapped in time


def test_a_busy_instance_does_not_hold_back_the_next_batch():
    batcher, instances, log = group(2, seconds=0.01)

    async def go():
        instances[0].gate.clear()  # the first batch goes to instance 0 and stays there
        held = batcher.submit(np.array([0.0]), far())
        await asyncio.sleep(0.05)
        rest = [batcher.submit(np.array([float(i)]), far()) for i in range(1, 4)]
        done = await asyncio.gather(*rest)  # served by instance 1 while 0 is still held
        assert not held.done()
        instances[0].gate.set()
        return done, await held

    done, held = asyncio.run(run_with(batcher, go()))
    assert [r[0].tolist() for r in done] == [[2.0], [4.0], [6.0]]
    assert held[0].tolist() == [0.0]
    # Instance 1 served all three (in batches of its share) before instance 0 finished.
    assert [name for name, _, _, _ in log] == [1] * (len(log) - 1) + [0], log
    assert sum(size for name, size, _, _ in log if name == 1) == 3


def test_a_lone_item_runs_at_once_on_an_idle_group():
    batcher, _, log = group(3, seconds=0.0)

    async def go():
        _, info = await batcher.submit(np.array([1.0]), far())
        return info

    info = asyncio.run(run_with(batcher, go()))
    assert [size for _, size, _, _ in log] == [1]
    assert info.queue_s < 0.5


def test_closed_loop_clients_settle_into_one_batch_per_instance():
    # 16 clients that come back as soon as they are answered: two instances each take about
    # half of them, one batch running while the other's clients come back.
    batcher, _, log = group(2, seconds=0.05, max_batch_size=16, regroup_s=0.02)

    async def client(i: int):
        await asyncio.sleep(0.004 * i)
        for _ in range(8):
            await batcher.submit(np.array([float(i)]), far())
            await asyncio.sleep(0.002)

    async def go():
        await asyncio.gather(*(client(i) for i in range(16)))

    asyncio.run(run_with(batcher, go()))
    steady = [size for _, size, _, _ in sorted(log, key=lambda e: e[2])][4:-4]
    # Mostly halves of the sixteen (a late client on a busy machine may shift one batch).
    assert steady and sorted(steady)[len(steady) // 2] == 8, log
    assert sum(6 <= size <= 10 for size in steady) >= 0.7 * len(steady), log
    assert {name for name, _, _, _ in log} == {0, 1}


def test_a_failing_instance_fails_only_its_batch_and_is_used_again():
    batcher, instances, log = group(2, seconds=0.01)

    async def go():
        instances[0].fail_next = True
        first = batcher.submit(np.array([1.0]), far())
        with pytest.raises(ModelError):
            await first
        # Both instances serve again: a burst larger than one share reaches both.
        return await burst(batcher, instances, 4)

    results = asyncio.run(run_with(batcher, go()))
    assert [r[0].tolist() for r in results] == [[0.0], [2.0], [4.0], [6.0]]
    assert {name for name, _, _, _ in log} == {0, 1}


def test_stop_fails_the_batches_still_executing():
    batcher, instances, _ = group(2, seconds=0.0)

    async def go():
        for inst in instances:
            inst.gate.clear()
        futures = [batcher.submit(np.array([float(i)]), far()) for i in range(4)]
        await asyncio.sleep(0.05)
        threading.Timer(0.2, lambda: [inst.gate.set() for inst in instances]).start()
        await batcher.stop()
        return await asyncio.gather(*futures, return_exceptions=True)

    async def main():
        batcher.start()
        return await go()

    outcomes = asyncio.run(main())
    assert all(isinstance(o, ShuttingDown) and "shutting down" in str(o) for o in outcomes)


def test_the_busy_ratio_counts_every_instance():
    window = BusyWindow(window_s=10.0, capacity=2)
    t0 = time.monotonic()
    a = window.begin()
    time.sleep(0.2)
    b = window.begin()
    t1 = time.monotonic()
    time.sleep(0.2)
    window.end(a)
    window.end(b)
    t2 = time.monotonic()
    # Busy seconds over both instances, divided by two instances' capacity of the window.
    lower = ((t1 - t0) + 2 * (t2 - t1)) / (2 * 10.0)
    upper = (2 * (t2 - t0)) / (2 * 10.0)
    assert lower * 0.9 <= window.ratio() <= upper


def test_the_busy_ratio_equals_the_busy_time_in_the_window_span_by_span(monkeypatch):
    """Against the sum over every span, clipped to the window, on a clock the test moves:
    overlapping instances, spans that straddle the window's start, long and short ones, spans
    still open, and a window that empties and fills again."""
    import service.metrics as metrics_module

    clock = [1000.0]
    monkeypatch.setattr(metrics_module.time, "monotonic", lambda: clock[0])
    rng = np.random.default_rng(7)
    window = BusyWindow(window_s=2.0, capacity=3)
    spans: list[tuple[float, float]] = []
    open_: dict[int, float] = {}

    def expected() -> float:
        now, start = clock[0], clock[0] - 2.0
        busy = sum(max(0.0, min(e, now) - max(s, start)) for s, e in spans)
        busy += sum(now - max(s, start) for s in open_.values())
        return min(1.0, busy / (3 * 2.0))

    checked = 0
    for step in range(4000):
        clock[0] += float(rng.choice([1e-4, 1e-3, 0.05, 0.7, 3.0], p=[0.4, 0.3, 0.2, 0.08, 0.02]))
        if len(open_) < 3 and rng.random() < 0.5:
            open_[window.begin()] = clock[0]
        elif open_ and rng.random() < 0.6:
            token = int(rng.choice(list(open_)))
            spans.append((open_.pop(token), clock[0]))
            window.end(token)
        if step % 7 == 0:
            assert window.ratio() == pytest.approx(expected(), abs=1e-9)
            checked += 1
    assert checked > 500 and 0 < window.ratio() <= 1


def test_an_empty_group_is_refused():
    with pytest.raises(ValueError):
        DynamicBatcher("model", [], max_batch_size=8, metrics=Metrics())


@pytest.mark.parametrize(
    ("settings", "gpu", "cpus", "expected"),
    [
        ((0, 0, 0), True, 16, (1, 0, 0)),  # a GPU: one instance, TensorFlow's own threads
        ((0, 0, 0), False, 2, (2, 1, 2)),  # a CPU: one single-threaded instance per core
        ((0, 0, 0), False, 1, (1, 0, 0)),
        ((0, 0, 0), False, 64, (MAX_AUTO_CPU_INSTANCES, 1, MAX_AUTO_CPU_INSTANCES)),
        ((1, 0, 0), False, 16, (1, 0, 0)),  # one instance asked for: TensorFlow's defaults
        ((4, 2, 0), False, 16, (4, 2, 4)),  # threads set explicitly are kept
        ((3, 0, 0), True, 16, (3, 0, 0)),  # several on a GPU: TensorFlow's own threads
    ],
)
def test_automatic_instances_and_threads(settings, gpu, cpus, expected):
    instances, intra, inter = settings
    plan = plan_threads(
        instances=instances, intra_op_threads=intra, inter_op_threads=inter, gpu=gpu, cpus=cpus
    )
    assert (plan.instances, plan.intra_op_threads, plan.inter_op_threads) == expected


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "250000 100000\n"}, 2.5),  # cgroup v2, limits.cpu: 2500m
        ({"cpu.max": "max 100000\n"}, None),  # v2, no limit
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.0),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),  # no cgroup files at all
    ],
)
def test_a_pods_cpu_limit_is_read_from_its_cgroup(tmp_path, files, expected):
    from service.cpus import available_cpus, cgroup_cpu_limit

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(str(tmp_path)) == expected
    mask = len(os.sched_getaffinity(0))
    want = mask if expected is None else min(mask, math.ceil(expected))
    assert available_cpus(str(tmp_path)) == want


class _Echo(ModelRunner):
    """The real runner's two input buffers and assembly ahead; its "model" answers each row as
    the buffer holds it when the call runs, after waiting for the gate of the batch's first
    value (if it has one)."""

    backend = "fake"

    def __init__(self, gates: dict[float, threading.Event]):
        self.gates = gates
        self.buckets, self.max_batch_size = [1, 2, 4], 4
        self.input_shape, self.input_dtype, self.images = (1,), np.dtype(np.float32), False
        self._buffers, self.call_cost_s, self.device = {}, 0.0, "/device:GPU:0"
        self._lock = threading.Lock()

    def _compile(self, xla):
        pass

    def _device(self):
        return self.device

    compilations = 0

    def _call(self, batch):
        gate = self.gates.get(float(batch[0, 0]))
        if gate is not None:
            assert gate.wait(30)
        return np.array(batch, copy=True)


def test_a_batch_assembled_ahead_runs_next_on_its_instance_with_its_own_items():
    """An instance whose next batch is assembled ahead runs that batch before any other: an
    ordinary batch dispatched to it after a hold would be assembled into the other buffer,
    and the one after into the very buffer where the ahead batch waits."""
    gates = {1.0: threading.Event(), 2.0: threading.Event(), 4.0: threading.Event()}

    def item(value: float) -> np.ndarray:
        return np.frombuffer(np.float32([value]).tobytes(), np.float32)

    async def scenario():
        runners = [_Echo(gates), _Echo(gates)]
        batcher = DynamicBatcher(
            "echo",
            [r.run for r in runners],
            max_batch_size=4,
            metrics=Metrics(),
            max_delay_s=0.1,
            ahead=[(r.assemble, r.execute) for r in runners],
        )
        batcher.start()
        futures = {1: batcher.submit(item(1), far())}  # instance 0, held at its gate
        await asyncio.sleep(0.2)
        futures[2] = batcher.submit(item(2), far())  # instance 1, held
        await asyncio.sleep(0.2)
        futures[3] = batcher.submit(item(3), far())  # both busy: assembled ahead for 0
        await asyncio.sleep(0.05)
        gates[2.0].set()  # instance 1 free
        await asyncio.sleep(0.05)
        futures[4] = batcher.submit(item(4), far())  # held for max_delay...
        await asyncio.sleep(0.02)
        gates[1.0].set()  # ...while instance 0 finishes: its ahead batch must go next
        await asyncio.sleep(0.2)
        futures[5] = batcher.submit(item(5), far())
        await asyncio.sleep(0.02)
        gates[4.0].set()
        out = {k: float((await asyncio.wait_for(f, 10))[0][0]) for k, f in futures.items()}
        await batcher.stop()
        return out

    assert asyncio.run(scenario()) == {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0, 5: 5.0}


def test_a_burst_at_an_idle_accelerator_instance_answers_every_item_with_its_own_output():
    """Batch A goes to the runner, which assembles it in its thread, while the assembly thread
    assembles B ahead: B's assembly may come first. Then C is assembled ahead while B runs,
    and must not be given the buffer B is read from (the model reads it during the call)."""
    gates: dict[float, threading.Event] = {}

    class Slow(_Echo):
        def _call(self, batch):
            time.sleep(0.02)  # the device computing, reading its input buffer
            return super()._call(batch)

    def item(value: float) -> np.ndarray:
        return np.frombuffer(np.float32([value]).tobytes(), np.float32)

    async def scenario():
        runner = Slow(gates)
        batcher = DynamicBatcher(
            "echo",
            [runner.run],
            max_batch_size=4,
            metrics=Metrics(),
            ahead=[(runner.assemble, runner.execute)],
        )
        batcher.start()
        wrong = 0
        for burst in range(10):
            values = [burst * 100.0 + i for i in range(12)]  # three full batches at once
            futures = [batcher.submit(item(v), far()) for v in values]
            outputs = [float((await f)[0][0]) for f in futures]
            wrong += sum(o != v for o, v in zip(outputs, values, strict=True))
            await asyncio.sleep(0.03)
        await batcher.stop()
        return wrong

    assert asyncio.run(scenario()) == 0


def test_every_model_stage_of_a_chain_links_its_batch_span_to_the_request(monkeypatch):
    """A multi-stage pipeline runs each item in a task through its stages: the request's
    traceparent goes along, as a single-stage pipeline's ticket carries it."""
    from service import tracing
    from service.engine.chain import Chain
    from service.engine.replies import FutureReply
    from service.engine.stages import ModelStage

    links: list[tuple[str, list]] = []
    monkeypatch.setattr(tracing, "ENABLED", True)
    monkeypatch.setattr(
        tracing, "batch_span", lambda found, _pipeline, stage, *rest: links.append((stage, found))
    )
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    async def scenario():
        stages = []
        for name in ("p/backbone", "p/head"):
            stage = ModelStage(name, loaded=None)  # type: ignore[arg-type]
            stage.batcher = DynamicBatcher(
                name,
                lambda items: (np.stack(items), len(items), 0.0),
                max_batch_size=4,
                metrics=Metrics(),
            )
            stage.batcher.start()
            stages.append(stage)
        future = asyncio.get_running_loop().create_future()
        Chain(stages).submit_many([(np.zeros(3, np.float32), far(), FutureReply(future, parent))])
        await asyncio.wait_for(future, 10)
        for stage in stages:
            await stage.batcher.stop()

    asyncio.run(scenario())
    assert links == [("p/backbone", [parent]), ("p/head", [parent])]
