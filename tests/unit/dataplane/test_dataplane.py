"""``DataPlane.infer`` with no HTTP and no server: the real registry with the tiny model as its
engine, the real decoder, and requests built as a codec builds them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np
import pytest

from service.dataplane.dataplane import DataPlane
from service.dataplane.request import InferRequest
from service.engine.registry import PipelineRegistry
from service.errors import (
    DeadlineExceeded,
    InvalidInput,
    NotReady,
    Overloaded,
    PipelineNotFound,
)
from service.metrics import Metrics
from service.preprocess.decoder import Decoder
from service.settings import Settings
from tests.support.harness import GatedRunner
from tests.support.helpers import encode, photo_like
from tests.support.tiny import tiny_loaded


@contextlib.asynccontextmanager
async def plane(**overrides) -> AsyncIterator[DataPlane]:
    settings = Settings(
        **{
            "model_instances": 1,
            "max_batch_size": 4,
            "batch_buckets": [1, 2, 4],
            "batch_regroup_ms": 0,
            "model_name": "tiny-net",
            **overrides,
        }
    )
    metrics = Metrics()
    registry = PipelineRegistry(settings, metrics, lambda: tiny_loaded(32))
    decoder = Decoder()
    await registry.start()
    try:
        yield DataPlane(settings, registry, decoder, metrics)
    finally:
        await registry.stop()
        decoder.close()


def jpeg(seed: int) -> bytes:
    return encode(photo_like(48, 64, seed=seed))


def run(coro):
    return asyncio.run(coro)


def test_images_come_back_ranked_in_request_order_with_their_timing():
    async def go():
        async with plane() as p:
            images = [jpeg(i) for i in range(3)]
            together = await p.infer(InferRequest(None, images, top_k=3))
            alone = [await p.infer(InferRequest(None, [image], top_k=3)) for image in images]
            return together, alone

    together, alone = run(go())
    assert together.pipeline.name == "default" and together.probabilities.shape == (3, 10)
    for i, single in enumerate(alone):  # the same image gives the same answer, in its place
        np.testing.assert_allclose(together.probabilities[i], single.probabilities[0], atol=1e-5)
    for row, predictions in zip(together.probabilities, together.predictions, strict=True):
        assert [p.class_id for p in predictions] == list(np.argsort(-row, kind="stable")[:3])
        assert predictions[0].label == f"class_{predictions[0].class_id}"
    assert np.allclose(together.probabilities.sum(axis=1), 1.0, atol=1e-5)
    t = together.timing
    assert t.preprocess_ms > 0 and t.total_ms >= t.inference_ms and sum(t.batch_sizes) >= 3


def test_the_model_name_and_the_pipeline_name_pick_the_same_pipeline():
    async def go():
        async with plane() as p:
            by_model = await p.infer(InferRequest("tiny-net", [jpeg(0)], top_k=1))
            by_pipeline = await p.infer(InferRequest("default", [jpeg(0)], top_k=1))
            with pytest.raises(PipelineNotFound) as err:
                await p.infer(InferRequest("nope", [jpeg(0)]))
            return by_model, by_pipeline, err.value

    by_model, by_pipeline, error = run(go())
    assert by_model.pipeline.name == by_pipeline.pipeline.name == "default"
    assert error.status == 404 and "'nope'" in error.message and "'default'" in error.message


def test_a_bad_image_fails_the_request_naming_its_index():
    async def go():
        async with plane() as p:
            with pytest.raises(InvalidInput) as err:
                await p.infer(InferRequest(None, [jpeg(0), b"not an image", jpeg(1)]))
            return err.value

    error = run(go())
    assert error.status == 400 and error.code == "not_an_image"
    assert error.message.startswith("image 1:") and error.details["image"] == 1


def test_pixels_of_the_wrong_shape_are_refused_before_the_model():
    async def go():
        async with plane() as p:
            good = await p.infer(InferRequest(None, pixels=np.zeros((2, 32, 32, 3), np.uint8)))
            with pytest.raises(InvalidInput) as err:
                await p.infer(InferRequest(None, pixels=np.zeros((1, 30, 32, 3), np.uint8)))
            return good, err.value

    good, error = run(go())
    assert good.probabilities.shape == (2, 10) and good.predictions == []  # top_k 0
    assert "pixels must be [N, 32, 32, 3] uint8, got [1, 30, 32, 3] uint8" in error.message


def test_more_images_than_the_bound_are_refused_at_once():
    async def go():
        async with plane(max_queue_images=2) as p:
            with pytest.raises(Overloaded) as err:
                await p.infer(InferRequest(None, [jpeg(i) for i in range(3)]))
            ok = await p.infer(InferRequest(None, [jpeg(0), jpeg(1)]))
            return err.value, ok, p.metrics.images_in_flight._value.get()

    error, ok, in_flight = run(go())
    assert error.status == 503 and error.retry and len(ok.probabilities) == 2
    assert in_flight == 0  # every admitted image let go


def test_a_deadline_that_passes_is_a_504_and_the_item_is_dropped_before_the_model():
    async def go():
        async with plane() as p:
            gate = GatedRunner(p.engine.get("default").batcher)
            held = asyncio.ensure_future(p.infer(InferRequest(None, [jpeg(0)])))
            await asyncio.to_thread(gate.entered.wait, 30)
            with pytest.raises(DeadlineExceeded):
                await p.infer(InferRequest(None, [jpeg(1)], timeout_s=0.2))
            gate.release.set()
            await held
            await asyncio.sleep(0.1)
            return gate.items

    assert run(go()) == 1  # only the held image reached the model


def test_a_draining_plane_refuses_even_a_pipeline_already_checked():
    async def go():
        async with plane() as p:
            checked = p.check(None)
            p.drain()
            with pytest.raises(NotReady) as err:
                await p.infer(InferRequest(None, [jpeg(0)]), checked)
            return err.value, p.ready, p.state

    error, ready, state = run(go())
    assert error.status == 503 and error.details["state"] == "draining"
    assert not ready and state == "draining"


def test_the_counts_include_a_request_before_its_answer_or_within_the_tally_interval():
    """The dataplane's per-request metric writes are deferred while other requests are in
    flight: a request answered while another is held is counted within the tally's interval;
    the last one is counted before it is answered."""

    def succeeded(p: DataPlane) -> float:
        return p.metrics.model_requests.labels("default", "success")._value.get()

    async def go():
        async with plane() as p:
            gate = GatedRunner(p.engine.get("default").batcher)
            held = asyncio.ensure_future(p.infer(InferRequest(None, [jpeg(0)])))
            await asyncio.to_thread(gate.entered.wait, 30)
            with pytest.raises(InvalidInput):  # answered while the first is held
                await p.infer(InferRequest(None, [b""]))
            failed = p.metrics.model_requests.labels("default", "fail")
            at_once = failed._value.get()
            await asyncio.sleep(3 * p.metrics.tally.interval_s)
            later = failed._value.get()
            gate.release.set()
            await held
            return at_once, later, succeeded(p)

    assert run(go()) == (0, 1, 1)


def test_each_request_is_counted_for_its_pipeline_by_outcome():
    async def go():
        async with plane() as p:
            await p.infer(InferRequest(None, [jpeg(0), jpeg(1)]))
            with pytest.raises(InvalidInput):
                await p.infer(InferRequest(None, [b""]))
            m = p.metrics
            return (
                m.model_requests.labels("default", "success")._value.get(),
                m.model_requests.labels("default", "fail")._value.get(),
                m.model_images.labels("default")._value.get(),
            )

    assert run(go()) == (1, 1, 2)
