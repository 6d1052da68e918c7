"""``observe_many``: the same samples as one ``observe`` per amount."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Histogram

from service.metrics import STAGE_BUCKETS, observe_many


def _samples(registry: CollectorRegistry) -> dict[tuple, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
    }


def _pair() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    a, b = CollectorRegistry(), CollectorRegistry()
    return (
        a,
        Histogram("wait_seconds", "w", buckets=STAGE_BUCKETS, registry=a),
        b,
        Histogram("wait_seconds", "w", buckets=STAGE_BUCKETS, registry=b),
    )


def test_observe_many_gives_the_samples_of_one_observe_each():
    # On a bound, between bounds, below the first, past the last, zero, repeated values.
    amounts = [0.0, 0.0005, 0.0006, 0.001, 0.003, 0.003, 0.3, 9.99, 10.0, 11.0, 1e9, 2e-5]
    one, each, many, bulk = _pair()
    for amount in amounts:
        each.observe(amount)
    observe_many(bulk, amounts)
    expected, got = _samples(one), _samples(many)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert math.isclose(got[key], value), key
    assert got[("wait_seconds_count", ())] == len(amounts)
    assert got[("wait_seconds_bucket", (("le", "0.001"),))] == 5  # 0, 0, .0005, .0006, .001


def test_observe_many_of_nothing_changes_nothing():
    one, _, many, bulk = _pair()
    observe_many(bulk, [])
    assert _samples(many) == _samples(one)


def test_observe_many_on_a_labelled_child_touches_only_that_child():
    registry = CollectorRegistry()
    h = Histogram("w_seconds", "w", ["stage"], buckets=(0.1, 1.0), registry=registry)
    observe_many(h.labels("a"), [0.05, 0.5, 5.0])
    samples = _samples(registry)
    assert samples[("w_seconds_count", (("stage", "a"),))] == 3
    assert samples[("w_seconds_bucket", (("le", "0.1"), ("stage", "a")))] == 1
    assert samples[("w_seconds_bucket", (("le", "1.0"), ("stage", "a")))] == 2
    assert math.isclose(samples[("w_seconds_sum", (("stage", "a"),))], 5.55)
    assert not any(dict(labels).get("stage") == "b" for _, labels in samples)


def test_a_nan_falls_in_no_bucket_as_with_observe():
    one, each, many, bulk = _pair()
    for amount in (0.002, math.nan):
        each.observe(amount)
    observe_many(bulk, [0.002, math.nan])
    expected, got = _samples(one), _samples(many)
    buckets = [key for key in expected if key[0] == "wait_seconds_bucket"]
    assert [got[key] for key in buckets] == [expected[key] for key in buckets]
    assert got[("wait_seconds_count", ())] == expected[("wait_seconds_count", ())] == 1
