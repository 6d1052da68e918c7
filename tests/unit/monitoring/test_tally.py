"""``Tally``: a hot loop's metric writes, deferred and then written as they would have been one
by one; written when flushed, or by the event loop within its interval."""

from __future__ import annotations

import asyncio
import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.metrics import STAGE_BUCKETS, Tally


def _metrics() -> tuple[CollectorRegistry, Counter, Gauge, Histogram]:
    registry = CollectorRegistry()
    return (
        registry,
        Counter("items", "i", ["model"], registry=registry),
        Gauge("depth", "d", registry=registry),
        Histogram("wait_seconds", "w", buckets=STAGE_BUCKETS, registry=registry),
    )


def _samples(registry: CollectorRegistry) -> dict[tuple, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def _writes(counter, gauge, histogram, inc, set_, observe, observe_many) -> None:
    inc(counter.labels("a"), 3)
    inc(counter.labels("b"))
    inc(counter.labels("a"), 0.5)
    set_(gauge, 7)
    set_(gauge, 2)
    observe(histogram, 0.001)
    observe_many(histogram, [0.0, 0.003, 0.003, 11.0])
    observe(histogram, 0.3)


def test_a_flush_writes_what_the_same_writes_one_by_one_would():
    direct, counter, gauge, histogram = _metrics()
    _writes(
        counter,
        gauge,
        histogram,
        lambda c, a=1.0: c.inc(a),
        lambda g, v: g.set(v),
        lambda h, a: h.observe(a),
        lambda h, amounts: [h.observe(a) for a in amounts],
    )
    deferred, counter, gauge, histogram = _metrics()

    async def record() -> None:
        tally = Tally(interval_s=60)
        _writes(counter, gauge, histogram, tally.inc, tally.set, tally.observe, tally.observe_many)
        assert not any(_samples(deferred).values())  # nothing written yet
        tally.flush()
        tally.flush()  # a second flush has nothing left to write

    asyncio.run(record())
    expected, got = _samples(direct), _samples(deferred)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert math.isclose(got[key], value), key
    assert got[("items_total", (("model", "a"),))] == 3.5
    assert got[("depth", ())] == 2  # the last value set
    assert got[("wait_seconds_count", ())] == 6


def test_what_is_not_flushed_is_written_within_the_interval():
    registry, counter, _, histogram = _metrics()

    async def record() -> tuple[float, float, float]:
        tally = Tally(interval_s=0.05)
        tally.inc(counter.labels("a"), 2)
        tally.observe(histogram, 0.2)
        before = _samples(registry)[("items_total", (("model", "a"),))]
        await asyncio.sleep(0.2)
        after = _samples(registry)
        return before, after[("items_total", (("model", "a"),))], after[("wait_seconds_sum", ())]

    before, after, waited = asyncio.run(record())
    assert (before, after, waited) == (0.0, 2.0, 0.2)


def test_a_negative_increment_is_refused_when_recorded():
    _, counter, _, _ = _metrics()

    async def record() -> None:
        Tally().inc(counter.labels("a"), -1)

    with pytest.raises(ValueError, match="non-negative"):
        asyncio.run(record())
