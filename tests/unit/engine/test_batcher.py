"""The dynamic batcher: immediate dispatch when idle, batches that grow under load."""

import asyncio
import threading
import time

import numpy as np
import pytest

from service.engine.batcher import DynamicBatcher
from service.errors import DeadlineExceeded, ModelError, QueueFull, ShuttingDown
from service.metrics import Metrics
from tests.support.helpers import far, run_with


class SlowRunner:
    """Stands in for a model: a fixed cost per batch that releases the GIL."""

    def __init__(self, seconds: float = 0.05, fail_on: int | None = None):
        self.seconds = seconds
        self.batches: list[int] = []
        self.fail_on = fail_on
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, payloads):
        self.gate.wait(5)
        self.batches.append(len(payloads))
        if self.fail_on is not None and len(self.batches) == self.fail_on:
            raise RuntimeError("boom")
        time.sleep(self.seconds)
        out = np.stack([p.astype(np.float32) * 2 for p in payloads])
        return out, len(payloads), self.seconds


def make(runner, **kwargs):
    kwargs.setdefault("max_batch_size", 8)
    return DynamicBatcher("model", runner, metrics=Metrics(), **kwargs)


def test_a_lone_item_runs_at_once_alone():
    runner = SlowRunner(0.0)
    batcher = make(runner, max_delay_s=0.0)

    async def go():
        row, info = await batcher.submit(np.array([1.0]), far())
        return row, info

    row, info = asyncio.run(run_with(batcher, go()))
    assert row.tolist() == [2.0]
    assert runner.batches == [1]
    assert info.batch_size == 1
    assert info.queue_s < 0.5  # dispatched at once, not after any delay


def test_items_arriving_while_the_runner_is_busy_form_one_batch():
    runner = SlowRunner(0.05)
    batcher = make(runner)

    async def go():
        runner.gate.clear()  # hold the first batch in the runner
        first = batcher.submit(np.array([0.0]), far())
        await asyncio.sleep(0.05)
        rest = [batcher.submit(np.array([float(i)]), far()) for i in range(1, 7)]
        runner.gate.set()
        results = await asyncio.gather(first, *rest)
        return [r[0].tolist() for r in results]

    rows = asyncio.run(run_with(batcher, go()))
    assert rows == [[2.0 * i] for i in range(7)]  # every item gets its own answer
    assert runner.batches == [1, 6]


def test_batches_never_exceed_the_maximum():
    runner = SlowRunner(0.01)
    batcher = make(runner, max_batch_size=4)

    async def go():
        runner.gate.clear()
        futures = [batcher.submit(np.array([float(i)]), far()) for i in range(10)]
        runner.gate.set()
        await asyncio.gather(*futures)

    asyncio.run(run_with(batcher, go()))
    assert max(runner.batches) == 4 and sum(runner.batches) == 10


def test_max_delay_holds_a_partial_batch_for_an_idle_runner():
    runner = SlowRunner(0.0)
    batcher = make(runner, max_delay_s=0.3)

    async def go():
        a = batcher.submit(np.array([1.0]), far())
        await asyncio.sleep(0.05)
        b = batcher.submit(np.array([2.0]), far())
        await asyncio.gather(a, b)

    asyncio.run(run_with(batcher, go()))
    assert runner.batches == [2]


def test_expired_items_never_reach_the_model():
    runner = SlowRunner(0.0)
    batcher = make(runner)

    async def go():
        runner.gate.clear()
        busy = batcher.submit(np.array([0.0]), far())
        await asyncio.sleep(0.02)
        late = batcher.submit(np.array([1.0]), time.monotonic() + 0.01)
        await asyncio.sleep(0.05)
        runner.gate.set()
        await busy
        with pytest.raises(DeadlineExceeded):
            await late

    asyncio.run(run_with(batcher, go()))
    assert runner.batches == [1]


def test_a_model_error_fails_only_its_batch():
    runner = SlowRunner(0.0, fail_on=1)
    batcher = make(runner)

    async def go():
        with pytest.raises(ModelError):
            await batcher.submit(np.array([1.0]), far())
        row, _ = await batcher.submit(np.array([3.0]), far())
        return row

    assert asyncio.run(run_with(batcher, go())).tolist() == [6.0]


def test_the_queue_is_bounded():
    runner = SlowRunner(0.0)
    batcher = make(runner, max_queue=2)

    async def go():
        runner.gate.clear()
        batcher.submit(np.array([1.0]), far())
        batcher.submit(np.array([1.0]), far())
        with pytest.raises(QueueFull):
            batcher.submit(np.array([1.0]), far())
        runner.gate.set()

    asyncio.run(run_with(batcher, go()))


def test_exact_sizes_take_the_largest_full_bucket_and_never_pad():
    runner = SlowRunner(0.01)
    batcher = make(runner, exact_sizes=[1, 2, 4, 8])

    async def go():
        runner.gate.clear()
        futures = [batcher.submit(np.array([float(i)]), far()) for i in range(11)]
        runner.gate.set()
        rows = await asyncio.gather(*futures)
        return [r[0].tolist() for r in rows]

    rows = asyncio.run(run_with(batcher, go()))
    assert rows == [[2.0 * i] for i in range(11)]
    assert runner.batches == [8, 2, 1]  # 11 = 8 + 2 + 1: every batch is a bucket size


def test_exact_sizes_pad_a_batch_that_nearly_fills_the_next_bucket():
    runner = SlowRunner(0.01)
    batcher = make(runner, max_batch_size=16, exact_sizes=[1, 2, 4, 8, 16])

    async def go():
        runner.gate.clear()
        futures = [batcher.submit(np.array([float(i)]), far()) for i in range(15)]
        runner.gate.set()
        await asyncio.gather(*futures)

    asyncio.run(run_with(batcher, go()))
    assert runner.batches == [15]  # 1 padded slot of 16, rather than 8 + 4 + 2 + 1


def test_without_exact_sizes_a_batch_takes_everything_up_to_the_maximum():
    runner = SlowRunner(0.01)
    batcher = make(runner)

    async def go():
        runner.gate.clear()
        futures = [batcher.submit(np.array([float(i)]), far()) for i in range(11)]
        runner.gate.set()
        await asyncio.gather(*futures)

    asyncio.run(run_with(batcher, go()))
    assert runner.batches == [8, 3]


def _closed_loop(batcher, clients: int, rounds: int, think_s: float):
    """``clients`` clients starting a few ms apart, each submitting again ``think_s`` after its
    answer (what a closed-loop load test does)."""

    async def client(i: int):
        await asyncio.sleep(0.004 * i)
        for _ in range(rounds):
            await batcher.submit(np.array([float(i)]), far())
            await asyncio.sleep(think_s)

    async def go():
        await asyncio.gather(*(client(i) for i in range(clients)))

    asyncio.run(run_with(batcher, go()))


def test_under_load_batches_regroup_instead_of_alternating_halves():
    runner = SlowRunner(0.05)
    batcher = make(runner, max_batch_size=16, regroup_s=0.02)
    _closed_loop(batcher, clients=16, rounds=6, think_s=0.002)
    # After the staggered start, every client is in one batch (until they finish one by one).
    assert runner.batches[2:5] == [16, 16, 16], runner.batches


def test_without_regrouping_sixteen_clients_split_into_smaller_batches():
    runner = SlowRunner(0.05)
    batcher = make(runner, max_batch_size=16, regroup_s=0.0)
    _closed_loop(batcher, clients=16, rounds=6, think_s=0.002)
    assert 16 not in runner.batches[2:5], runner.batches


def test_regrouping_stops_waiting_once_the_last_batchs_clients_are_back():
    # Four closed-loop clients in one batch: after each answer all four come back within
    # milliseconds, and the next batch must start then, not wait out the 2 s budget for a
    # fifth item that no client will send.
    runner = SlowRunner(0.05)
    batcher = make(runner, max_batch_size=16, regroup_s=2.0, regroup_fraction=100.0)
    waits: list[float] = []

    async def client(i: int):
        for _ in range(4):
            _, info = await batcher.submit(np.array([float(i)]), far())
            waits.append(info.queue_s)
            await asyncio.sleep(0.002)

    async def go():
        runner.gate.clear()  # the four first items form one batch
        clients = [asyncio.ensure_future(client(i)) for i in range(4)]
        await asyncio.sleep(0.05)
        runner.gate.set()
        await asyncio.gather(*clients)

    asyncio.run(run_with(batcher, go()))
    assert runner.batches[-3:] == [4, 4, 4], runner.batches
    # Every later item waited a few ms for the others, far below the budget.
    assert max(waits[4:]) < 1.0, waits


def test_a_lone_client_never_waits_for_regrouping():
    runner = SlowRunner(0.02)
    batcher = make(runner, regroup_s=5.0, regroup_fraction=1.0)

    async def go():
        waits = []
        for _ in range(4):
            _, info = await batcher.submit(np.array([1.0]), far())
            waits.append(info.queue_s)
            await asyncio.sleep(0.001)
        return waits

    waits = asyncio.run(run_with(batcher, go()))
    assert runner.batches == [1, 1, 1, 1]
    assert max(waits) < 1.0  # a hold would have lasted up to the 5 s budget


def _steady(batcher, n: int, gap_s: float):
    """``n`` items, one every ``gap_s``: their rows and infos."""

    async def go():
        futures = []
        for i in range(n):
            futures.append(batcher.submit(np.array([float(i)]), far()))
            await asyncio.sleep(gap_s)
        return await asyncio.gather(*futures)

    return asyncio.run(run_with(batcher, go()))


def test_items_arriving_faster_than_a_call_costs_coalesce_for_at_most_that_cost():
    """A runner that is quick to compute but pays 40 ms a call whatever the batch size (a
    framework's dispatch, a device transfer): items every 5 ms, with the runner idle between
    them, run together instead of one execution each, and none waits longer than one call's
    cost (plus the scheduling slack of a busy test machine)."""
    runner = SlowRunner(0.0)
    batcher = make(runner, regroup_s=0.05, call_cost_s=0.04)
    done = _steady(batcher, 24, 0.005)
    assert [row.tolist() for row, _ in done] == [[2.0 * i] for i in range(24)]
    assert len(runner.batches) <= 12, runner.batches  # alone, it would be 24 executions
    assert max(info.queue_s for _, info in done) < 0.04 + 0.1


def test_without_a_fixed_cost_or_after_a_pause_a_lone_item_never_waits():
    for batcher_kwargs, gap_s in (({"call_cost_s": 0.0}, 0.005), ({"call_cost_s": 0.04}, 0.12)):
        runner = SlowRunner(0.0)
        batcher = make(runner, regroup_s=0.05, **batcher_kwargs)
        done = _steady(batcher, 6, gap_s)
        assert runner.batches == [1] * 6, (batcher_kwargs, runner.batches)
        assert max(info.queue_s for _, info in done) < 0.02


def test_the_fixed_cost_is_the_intercept_of_the_buckets_times():
    from service.model.runner import fixed_cost

    # 2 ms a call plus 0.5 ms an image: 2 ms; time proportional to size: none; never above
    # the smallest bucket's own time, never below zero.
    assert fixed_cost({1: 0.0025, 2: 0.003, 4: 0.004, 8: 0.006}) == pytest.approx(0.002)
    assert fixed_cost({1: 0.05, 2: 0.1, 4: 0.2}) == pytest.approx(0.0, abs=1e-9)
    assert fixed_cost({1: 0.001, 32: 0.001}) == pytest.approx(0.001)
    assert fixed_cost({8: 0.01}) == 0.0


class TwoHalves:
    """A runner in its two halves (``assemble``, ``execute``) for the batcher's ``ahead``:
    records when each half ran; ``execute`` holds until ``gate`` is set."""

    def __init__(self):
        self.events: list[tuple[str, int, float]] = []
        self.gate = threading.Event()

    def assemble(self, payloads):
        self.events.append(("assemble", len(payloads), time.monotonic()))
        return np.stack(payloads)

    def execute(self, batch):
        self.gate.wait(10)
        self.events.append(("execute", len(batch), time.monotonic()))
        return batch.astype(np.float32) * 2, len(batch), 0.01

    def run(self, payloads):
        return self.execute(self.assemble(payloads))


def test_items_submitted_together_form_one_batch_with_one_wakeup():
    runner = SlowRunner(0.0)
    batcher = make(runner)

    class Reply:
        def __init__(self):
            self.result = None

        def done(self):
            return self.result is not None

        def set_result(self, result):
            self.result = result

        def set_exception(self, exc):
            self.result = exc

    replies = [Reply() for _ in range(5)]

    async def go():
        batcher.submit_many([(np.array([float(i)]), far(), r) for i, r in enumerate(replies)])
        for _ in range(200):
            if all(r.done() for r in replies):
                return
            await asyncio.sleep(0.01)

    asyncio.run(run_with(batcher, go()))
    assert runner.batches == [5]
    assert [r.result[0].tolist() for r in replies] == [[0.0], [2.0], [4.0], [6.0], [8.0]]


def test_items_past_the_queue_bound_in_one_submission_are_refused_alone():
    batcher = make(SlowRunner(0.0), max_queue=2)
    seen = []

    class Reply:
        def done(self):
            return False

        def set_result(self, result):
            seen.append("ok")

        def set_exception(self, exc):
            seen.append(type(exc).__name__)

    async def go():
        batcher.submit_many([(np.array([1.0]), far(), Reply()) for _ in range(3)])
        await asyncio.sleep(0.3)

    asyncio.run(run_with(batcher, go()))
    assert sorted(seen) == ["QueueFull", "ok", "ok"]


def test_a_full_batch_is_assembled_while_the_one_before_runs():
    halves = TwoHalves()
    metrics = Metrics()
    batcher = DynamicBatcher(
        "model",
        halves.run,
        max_batch_size=4,
        metrics=metrics,
        ahead=[(halves.assemble, halves.execute)],
    )

    async def go():
        first = [batcher.submit(np.array([float(i)]), far()) for i in range(4)]
        await asyncio.sleep(0.1)  # the first batch is executing (held by the gate)
        second = [batcher.submit(np.array([float(i)]), far()) for i in range(4, 8)]
        await asyncio.sleep(0.2)  # assembled meanwhile, waiting for the runner
        assembled_while_busy = [e for e in halves.events if e[0] == "assemble"]
        halves.gate.set()
        rows = await asyncio.gather(*first, *second)
        return assembled_while_busy, rows

    assembled, rows = asyncio.run(run_with(batcher, go()))
    # Both batches were assembled before the first one finished executing.
    assert [n for _, n, _ in assembled] == [4, 4]
    executed = [e for e in halves.events if e[0] == "execute"]
    assert [n for _, n, _ in executed] == [4, 4]
    assert [row.tolist() for row, _ in rows] == [[2.0 * i] for i in range(8)]
    ahead = metrics.batch_assembly_seconds.labels("ahead")._value.get()
    assert ahead > 0


def test_stopping_answers_a_batch_assembled_ahead():
    halves = TwoHalves()
    batcher = DynamicBatcher(
        "model",
        halves.run,
        max_batch_size=2,
        metrics=Metrics(),
        ahead=[(halves.assemble, halves.execute)],
    )

    async def go():
        batcher.start()
        first = [batcher.submit(np.array([1.0]), far()) for _ in range(2)]
        await asyncio.sleep(0.1)
        second = [batcher.submit(np.array([2.0]), far()) for _ in range(2)]
        await asyncio.sleep(0.2)
        threading.Timer(0.3, halves.gate.set).start()
        await batcher.stop()
        return await asyncio.gather(*first, *second, return_exceptions=True)

    out = asyncio.run(go())
    assert all(isinstance(x, ShuttingDown) for x in out[2:]), out


def test_the_batchers_metric_writes_wait_for_a_scrape_or_the_tallys_interval():
    """The batcher records its per-batch metrics in the process's tally, not once per batch
    in the metrics (in the pod, each is a write to a memory-mapped file): a scrape the moment
    the answers are in counts every item (it flushes the tally first; the accelerator process
    does when a front end asks, tests/system/protocols), and without a scrape they are written
    within the tally's interval."""
    runner = SlowRunner(0.01)
    metrics = Metrics()
    batcher = DynamicBatcher("model", runner, max_batch_size=4, metrics=metrics)
    counted = []

    def scraped() -> tuple[float, ...]:
        samples = {
            (s.name, tuple(s.labels.values())): s.value
            for family in metrics.collect()
            for s in family.samples
        }
        return (
            samples[("serve_inference_count_total", ())],
            samples[("serve_execution_count_total", ())],
            samples[("serve_queue_depth", ("model",))],
        )

    async def go():
        for size in (1, 10):
            items = [batcher.submit(np.array([float(i)]), far()) for i in range(size)]
            await asyncio.gather(*items)
            counted.append((*scraped(), float(len(runner.batches))))
        items = [batcher.submit(np.array([float(i)]), far()) for i in range(3)]
        await asyncio.gather(*items)
        counted.append(metrics.inference_count._value.get())  # not written yet
        await asyncio.sleep(metrics.tally.interval_s * 2)
        counted.append(metrics.inference_count._value.get())  # written by the interval

    asyncio.run(run_with(batcher, go()))
    (first, second, unwritten, written) = counted
    assert first == (1.0, 1.0, 0.0, 1.0)
    inferred, executions, depth, batches_run = second
    assert (inferred, depth) == (11.0, 0.0) and executions == batches_run
    assert (unwritten, written) == (11.0, 14.0)
    assert sum(runner.batches) == 14


class WhereRunner:
    """A model whose cost per batch the test sets; records the thread each batch ran on."""

    def __init__(self):
        self.seconds = 0.0
        self.fail = False
        self.threads: list[tuple[int, str]] = []

    def __call__(self, payloads):
        self.threads.append((len(payloads), threading.current_thread().name))
        if self.fail:
            raise RuntimeError("boom")
        time.sleep(self.seconds)
        return np.stack([p * 2 for p in payloads]), len(payloads), self.seconds


def test_a_batch_cheaper_than_inline_s_runs_on_the_event_loop_and_a_slow_one_goes_back():
    """The first batch of a size runs in the instance's thread and is timed; the next batches
    of that size run on the event loop while they stay under ``inline_s``; one that ran slower
    (or failed) sends the next of its size back to the thread. With ``inline_s`` 0 every batch
    runs in the thread."""
    loop_thread = threading.current_thread().name  # asyncio.run runs the loop here

    def serve(inline_s: float, plan: list[tuple[int, float, bool]]) -> list[tuple[int, str]]:
        runner = WhereRunner()
        batcher = make(runner, inline_s=inline_s)

        async def go():
            for size, seconds, fail in plan:
                runner.seconds, runner.fail = seconds, fail
                replies = [batcher.submit(np.array([float(i)]), far()) for i in range(size)]
                results = await asyncio.gather(*replies, return_exceptions=True)
                if fail:
                    assert all(isinstance(r, ModelError) for r in results)
                else:
                    assert [row.tolist() for row, _ in results] == [[2.0 * i] for i in range(size)]

        asyncio.run(run_with(batcher, go()))
        return [(n, "loop" if name == loop_thread else "thread") for n, name in runner.threads]

    fast, slow = 0.0, 0.02
    plan = [
        (1, fast, False),  # first of size 1: the thread, timed
        (1, fast, False),  # the loop
        (2, fast, False),  # first of size 2: the thread
        (1, slow, False),  # size 1 was fast: the loop, but it runs slow
        (1, fast, False),  # so the thread again
        (1, fast, False),  # fast there: the loop
        (1, fast, True),  # fails on the loop
        (1, fast, False),  # the thread again
    ]
    assert serve(0.005, plan) == [
        (1, "thread"),
        (1, "loop"),
        (2, "thread"),
        (1, "loop"),
        (1, "thread"),
        (1, "loop"),
        (1, "loop"),
        (1, "thread"),
    ]
    assert {where for _, where in serve(0.0, plan)} == {"thread"}


def test_a_cheap_batch_with_a_full_batch_queued_behind_it_runs_in_the_thread():
    """Under a backlog the thread lets the loop take in the next items while a batch runs: a
    batch of a size known to be cheap runs on the loop only while less than a full batch is
    queued behind it (here a batch is one item)."""
    runner = WhereRunner()
    loop_thread = threading.current_thread().name
    batcher = make(runner, inline_s=0.005, max_batch_size=1)

    async def go():
        await batcher.submit(np.array([1.0]), far())  # the size's first batch: timed
        await batcher.submit(np.array([1.0]), far())  # nothing queued: the loop
        await asyncio.gather(*(batcher.submit(np.array([1.0]), far()) for _ in range(3)))

    asyncio.run(run_with(batcher, go()))
    where = ["loop" if name == loop_thread else "thread" for _, name in runner.threads]
    assert where == ["thread", "loop", "thread", "thread", "loop"]


def test_a_cheap_batch_with_less_than_a_full_batch_behind_it_stays_on_the_loop():
    """Items that arrive while a batch is dispatched are no backlog: with batches of four, a
    cheap batch of two runs on the loop with two more queued behind it (they are the next
    batch), and goes to the thread with a full batch of four behind it."""
    runner = WhereRunner()
    loop_thread = threading.current_thread().name
    # Every batch here is cheap: a generous inline_s keeps a slow machine from changing that.
    batcher = make(runner, inline_s=1.0, max_batch_size=4)
    two = (np.array([1.0]), np.array([2.0]))

    async def go():
        await asyncio.gather(*(batcher.submit(p, far()) for p in two))  # size 2's first: timed
        await asyncio.gather(*(batcher.submit(p, far()) for p in two))  # nothing queued: loop
        # A batch of two taken, then two more queued before it runs: still the loop.
        first = [batcher.submit(p, far()) for p in two]
        await asyncio.sleep(0)
        second = [batcher.submit(p, far()) for p in two]
        await asyncio.gather(*first, *second)
        # A batch of two taken, then a full batch of four queued behind it: the thread.
        first = [batcher.submit(p, far()) for p in two]
        await asyncio.sleep(0)
        full = [batcher.submit(np.array([float(i)]), far()) for i in range(4)]
        await asyncio.gather(*first, *full)

    asyncio.run(run_with(batcher, go()))
    where = [(n, "loop" if name == loop_thread else "thread") for n, name in runner.threads]
    assert where[:4] == [(2, "thread"), (2, "loop"), (2, "loop"), (2, "loop")], where
    assert where[4] == (2, "thread"), where
