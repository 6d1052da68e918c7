"""The boundary between a front end and the accelerator process, in one event loop: the real
accelerator-side server (``engine/server.py``) over a real registry with the tiny model, and the
real front-end client (``dataplane/engine_client.py``), over a real Unix socket. Items travel in
batches both ways, and every item gets exactly one answer whatever fails."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from service.dataplane.engine_client import EngineClient
from service.engine import server as engine_server
from service.engine.registry import PipelineRegistry
from service.engine.server import EngineServer, Ticket
from service.errors import (
    DeadlineExceeded,
    EngineUnavailable,
    InvalidInput,
    ModelError,
    NotFound,
    NotReady,
    ServeError,
    ShuttingDown,
)
from service.metrics import Metrics
from service.pipeline.info import BatchInfo
from service.rundir import ENGINE_SOCKET
from service.settings import Settings
from service.wire import messages as m
from service.wire.channel import Channel, msgpack_codec
from tests.support.harness import GatedRunner
from tests.support.helpers import ROOT
from tests.support.tiny import tiny_loaded

SIZE = 32


def settings(**overrides) -> Settings:
    base = {
        "model_instances": 1,
        "max_batch_size": 8,
        "batch_buckets": [1, 2, 4, 8],
        "batch_regroup_ms": 0,
    }
    return Settings(**{**base, **overrides})


class Wired:
    def __init__(self, registry: PipelineRegistry, server: EngineServer, socket: str, s):
        self.registry, self.server, self.socket, self.settings = registry, server, socket, s
        self.clients: list[EngineClient] = []

    async def client(self, slots: int = 8, index: int = 0) -> EngineClient:
        client = EngineClient(
            self.settings, self.socket, index=index, slots=slots, slot_bytes=SIZE * SIZE * 3 * 4
        )
        await client.start()
        assert await client.wait_connected(30)
        self.clients.append(client)
        return client

    @property
    def batcher(self):
        return self.registry.get("default").batcher


@contextlib.asynccontextmanager
async def wired(**overrides) -> AsyncIterator[Wired]:
    s = settings(**overrides)
    registry = PipelineRegistry(s, Metrics(), lambda: tiny_loaded(SIZE))
    server = EngineServer(registry)
    with tempfile.TemporaryDirectory() as run_dir:
        socket = str(Path(run_dir) / ENGINE_SOCKET)
        await server.listen(socket)
        await registry.start()
        w = Wired(registry, server, socket, s)
        try:
            yield w
        finally:
            for client in w.clients:
                await client.stop()
            await registry.stop()
            await server.close()


async def held_batch(w: Wired, client: EngineClient) -> tuple[GatedRunner, asyncio.Future]:
    """An item whose batch the runner holds until ``gate.release`` is set."""
    gate = GatedRunner(w.batcher)
    running = asyncio.ensure_future(client.run("default", pixels(0), far()))
    await asyncio.to_thread(gate.entered.wait, 30)
    return gate, running


async def queue_behind(client: EngineClient) -> asyncio.Future:
    """An item queued behind a held batch."""
    queued = asyncio.ensure_future(client.run("default", pixels(1), far()))
    await asyncio.sleep(0.2)
    return queued


def pixels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), np.uint8)


def spy(client: EngineClient) -> dict[str, list]:
    """Every message the client sends and receives, by kind."""
    seen: dict[str, list] = {"sent": [], "received": []}
    channel = client._channel
    assert channel is not None
    send, receive = channel.send, client._on_message

    def sending(message):
        seen["sent"].append(message)
        return send(message)

    def receiving(message):
        seen["received"].append(message)
        receive(message)

    channel.send = sending  # type: ignore[method-assign]
    channel._on_message = receiving  # type: ignore[assignment]
    return seen


def test_items_ready_together_cross_in_one_message_and_come_back_in_one():
    async def go():
        async with wired() as w:
            client = await w.client()
            seen = spy(client)
            images = [pixels(i) for i in range(4)]
            results = await asyncio.gather(*(client.run("default", x, far()) for x in images))
            expected = w.registry.get("default").chain.first.runner.run(images)[0]
            return seen, results, expected, client.arena.free

    seen, results, expected, free = asyncio.run(go())
    submits = [x for x in seen["sent"] if isinstance(x, m.Submit)]
    dones = [x for x in seen["received"] if isinstance(x, m.Done)]
    assert [len(s.items) for s in submits] == [4]
    assert [len(d.ids) for d in dones] == [4] and dones[0].batch_size == 4
    assert all(slot >= 0 for slot in dones[0].slots) and dones[0].data is None  # in shared memory
    for (row, info), want in zip(results, expected, strict=True):
        np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-6)
        assert info.batch_size == 4
    assert free == 8  # every slot back


def test_items_past_the_slots_travel_inline_and_still_batch_together():
    async def go():
        async with wired() as w:
            client = await w.client(slots=2)
            images = [pixels(i) for i in range(5)]
            results = await asyncio.gather(*(client.run("default", x, far()) for x in images))
            expected = w.registry.get("default").chain.first.runner.run(images)[0]
            return results, expected, client.arena.free

    results, expected, free = asyncio.run(go())
    for (row, _), want in zip(results, expected, strict=True):
        np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-6)
    assert free == 2


def test_an_item_the_pipeline_cannot_take_fails_alone_and_the_others_run():
    async def go():
        async with wired() as w:
            client = await w.client()
            bad = np.zeros((SIZE + 1, SIZE, 3), np.uint8)
            out = await asyncio.gather(
                client.run("default", pixels(0), far()),
                client.run("default", bad, far()),
                client.run("default", pixels(1), far()),
                return_exceptions=True,
            )
            return out, client.arena.free

    (first, bad, last), free = asyncio.run(go())
    assert isinstance(bad, InvalidInput) and "takes [32, 32, 3]" in bad.message
    assert first[0].shape == (10,) and last[0].shape == (10,)
    assert free == 8


def test_an_unknown_pipeline_is_a_404_with_the_configured_ones():
    async def go():
        async with wired() as w:
            client = await w.client()
            with pytest.raises(NotFound) as err:
                await client.run("nope", pixels(), far())
            return err.value

    error = asyncio.run(go())
    assert error.code == "pipeline_not_found" and "'default'" in error.message


def test_a_failing_batch_fails_its_items_with_an_error_id_and_the_next_batch_runs():
    async def go():
        async with wired() as w:
            client = await w.client()
            runner = w.batcher._run_fns[0]
            calls = []

            def flaky(payloads):
                calls.append(len(payloads))
                if len(calls) == 1:
                    raise RuntimeError("device lost")
                return runner(payloads)

            w.batcher._run_fns[0] = flaky
            failed = await asyncio.gather(
                *(client.run("default", pixels(i), far()) for i in range(2)),  # one batch of 2
                return_exceptions=True,
            )
            after = await client.run("default", pixels(9), far())
            return failed, after, client.arena.free

    failed, after, free = asyncio.run(go())
    assert all(isinstance(e, ModelError) for e in failed), failed
    assert len({e.error_id for e in failed}) == 1 and failed[0].error_id
    assert after[0].shape == (10,)
    assert free == 8


def test_a_cancelled_item_is_dropped_before_the_model_and_its_slot_comes_back():
    async def go():
        async with wired() as w:
            client = await w.client()
            gate, first = await held_batch(w, client)
            keep = asyncio.ensure_future(client.run("default", pixels(1), far()))
            drop = asyncio.ensure_future(client.run("default", pixels(2), far()))
            await asyncio.sleep(0.2)  # both queued behind the held batch
            drop.cancel()
            await asyncio.sleep(0.2)  # the Cancel crossed
            assert client.arena.free == 5  # the dropped item's slot is held until answered
            gate.release.set()
            await first, await keep
            with pytest.raises(asyncio.CancelledError):
                await drop
            for _ in range(100):
                if client.arena.free == 8:
                    break
                await asyncio.sleep(0.02)
            return gate.items, client.arena.free, w.registry.metrics.expired._value.get()

    items, free, expired = asyncio.run(go())
    assert items == 2  # the cancelled one never reached the model
    assert free == 8 and expired == 1


def test_an_item_cancelled_while_its_batch_runs_gets_its_slot_back_when_the_batch_fails():
    """The batch's failure answers the cancelled item too: that answer is how the front end
    learns that its slot is free (and the accelerator process that nothing is in flight)."""

    async def go():
        async with wired() as w:
            client = await w.client()
            gate = GatedRunner(w.batcher)

            def failing(payloads):
                raise RuntimeError("device lost")

            gate.inner = failing
            running = asyncio.ensure_future(client.run("default", pixels(0), far()))
            await asyncio.to_thread(gate.entered.wait, 30)
            running.cancel()
            await asyncio.sleep(0.2)  # the Cancel crossed while the batch runs
            gate.release.set()
            for _ in range(100):
                if client.arena.free == 8:
                    break
                await asyncio.sleep(0.02)
            (frontend,) = w.server.frontends
            return client.arena.free, list(client._pending), list(frontend.pending)

    free, pending, in_flight = asyncio.run(go())
    assert free == 8 and pending == [] and in_flight == []


def test_a_scrape_asks_the_accelerator_process_to_write_what_it_counted():
    """The accelerator process writes its per-batch metrics every tally interval, not per
    batch; a front end about to scrape sends ``FlushMetrics`` and the answer comes once they
    are written. Without a connection the scrape does not wait."""

    async def go():
        async with wired() as w:
            client = await w.client()
            counted = w.registry.metrics.inference_count
            w.registry.metrics.tally.flush()  # (and its timer cancelled)
            w.registry.metrics.tally.interval_s = 60.0  # from now on only a flush writes them
            seen = spy(client)
            await asyncio.gather(*(client.run("default", pixels(i), far()) for i in range(3)))
            before = counted._value.get()
            flushed = await client.flush_metrics()
            after = counted._value.get()
            kinds = [type(x).__name__ for x in seen["sent"] + seen["received"]]
            await client.stop()
            started = time.monotonic()
            return before, flushed, after, kinds, await client.flush_metrics(), started

    before, flushed, after, kinds, unconnected, started = asyncio.run(go())
    assert (before, flushed, after) == (0.0, True, 3.0)
    assert "FlushMetrics" in kinds and "MetricsFlushed" in kinds
    assert unconnected is False and time.monotonic() - started < 0.5


def test_an_item_past_its_deadline_is_answered_504_without_running():
    async def go():
        async with wired() as w:
            client = await w.client()
            gate, first = await held_batch(w, client)
            late = asyncio.ensure_future(client.run("default", pixels(1), time.monotonic() + 0.1))
            await asyncio.sleep(0.3)
            gate.release.set()
            await first
            with pytest.raises(DeadlineExceeded):
                await late
            return gate.items, client.arena.free

    items, free = asyncio.run(go())
    assert items == 1 and free == 8


def test_a_front_end_that_goes_away_mid_batch_loses_only_its_own_items():
    async def go():
        async with wired() as w:
            gone = await w.client(index=0)
            other = await w.client(index=1)
            gate, held = await held_batch(w, gone)
            queued = asyncio.ensure_future(gone.run("default", pixels(1), far()))
            mine = asyncio.ensure_future(other.run("default", pixels(2), far()))
            await asyncio.sleep(0.2)
            assert len(w.server.frontends) == 2
            gone._stopping = True
            gone._channel.transport.abort()  # the process died: its socket closes
            lost = await asyncio.gather(held, queued, return_exceptions=True)
            gate.release.set()
            row, _ = await mine
            for _ in range(100):
                if len(w.server.frontends) == 1:
                    break
                await asyncio.sleep(0.02)
            frontend = next(iter(w.server.frontends))
            return lost, row, frontend.index, gate.items, other.arena.free

    lost, row, survivor, items, free = asyncio.run(go())
    assert all(isinstance(e, EngineUnavailable) for e in lost)
    assert row.shape == (10,) and survivor == 1 and free == 8
    assert items == 2  # the held batch ran to its end; the gone front end's queued item never did


def test_a_departed_front_ends_arena_is_unmapped_once_its_items_are_done():
    """Its slots are mapped in the accelerator process until no view of them is left; a
    runner thread that ran its last batch and now waits holds none."""

    async def go():
        async with wired(inline_batch_ms=0) as w:  # every batch in a runner thread
            gone = await w.client(index=0)
            row, _ = await gone.run("default", pixels(0), far())
            frontend = next(iter(w.server.frontends))
            assert frontend.arena is not None
            gone._stopping = True
            gone._channel.transport.abort()  # the process died: its socket closes
            for _ in range(150):  # a view still alive is retried each second
                if frontend.arena is None:
                    break
                await asyncio.sleep(0.02)
            return row, frontend.arena, w.server.frontends

    row, arena, frontends = asyncio.run(go())
    assert row.shape == (10,)
    assert arena is None and not frontends


def test_an_item_the_accelerator_process_cannot_read_fails_alone():
    """A front end's bug (a slot past its arena, a shape larger than a slot, a dtype numpy does
    not know, inline bytes of the wrong size, a negative dimension) fails that item with a 500;
    the item beside them in the same message runs, and the connection stays up."""

    async def go():
        async with wired() as w:
            client = await w.client(slots=4)
            loop = asyncio.get_running_loop()
            good = pixels(3)
            slot = client.arena.take()
            client.arena.write(slot, good)
            shape = (SIZE, SIZE, 3)
            items = [
                m.Item(9001, "default", 4, shape, "|u1", far()),
                m.Item(9002, "default", 1, (SIZE * 4, SIZE * 4, 3), "|u1", far()),
                m.Item(9003, "default", 2, shape, "nonsense", far()),
                m.Item(9004, "default", -1, shape, "|u1", far(), b"short"),
                m.Item(9006, "default", 3, (-1,), "|u1", far()),  # "the rest of the buffer"
                m.Item(9005, "default", slot, shape, "|u1", far()),
            ]
            answers = {}
            for item in items:  # as the client's own submit records them
                answers[item.id] = loop.create_future()
                client._pending[item.id] = (answers[item.id], item.slot if item.id == 9005 else -1)
            client._channel.send(m.Submit(items))
            got = await asyncio.wait_for(
                asyncio.gather(*answers.values(), return_exceptions=True), 30
            )
            after, _ = await client.run("default", good, far())  # the connection is up
            return dict(zip(answers, got, strict=True)), after, client.arena.free

    got, after, free = asyncio.run(go())
    for rid in (9001, 9002, 9003, 9004, 9006):
        error = got[rid]
        assert isinstance(error, ServeError), (rid, error)
        assert error.status == 500 and "cannot read it" in error.message
    row, _ = got[9005]
    np.testing.assert_allclose(row, after, rtol=1e-5)  # the same image, the same answer
    assert free == 4  # every slot back


def test_the_accelerator_process_going_away_fails_every_item_in_flight_at_once():
    async def go():
        async with wired() as w:
            client = await w.client()
            gate, running = await held_batch(w, client)
            queued = await queue_behind(client)
            started = time.monotonic()
            w.server._server.close()  # the process died: no listener, connections reset
            for frontend in list(w.server.frontends):
                frontend.channel.transport.abort()
            out = await asyncio.gather(running, queued, return_exceptions=True)
            waited = time.monotonic() - started
            gate.release.set()
            refused = None
            try:
                await client.run("default", pixels(2), far())
            except EngineUnavailable as exc:
                refused = exc
            return out, waited, client.arena.free, refused

    out, waited, free, refused = asyncio.run(go())
    assert all(isinstance(e, EngineUnavailable) for e in out) and waited < 5
    assert free == 8 and refused is not None and refused.status == 503


def test_stopping_the_accelerator_process_answers_what_is_queued():
    async def go():
        async with wired() as w:
            client = await w.client()
            gate, running = await held_batch(w, client)
            queued = await queue_behind(client)
            # Stopping waits for the runner's thread to finish its batch: let it, from aside.
            threading.Timer(0.5, gate.release.set).start()
            await w.registry.stop()
            return await asyncio.gather(running, queued, return_exceptions=True)

    running, queued = asyncio.run(go())
    assert isinstance(queued, ShuttingDown)
    assert isinstance(running, (tuple, ShuttingDown))


def test_an_item_that_arrives_once_the_pipelines_stopped_is_answered_at_once():
    """Not left in a batcher that runs no more until the process exits."""

    async def go():
        async with wired() as w:
            client = await w.client()
            await w.registry.stop()
            started = time.monotonic()
            with pytest.raises(NotReady) as err:
                await asyncio.wait_for(client.run("default", pixels(0), far()), 10)
            return err.value, time.monotonic() - started, client.arena.free

    error, seconds, free = asyncio.run(go())
    assert "draining" in error.message and seconds < 1 and free == 8


async def hello_answer(w: Wired, hello: m.Hello) -> list:
    """What the accelerator process answers a front end's ``hello``, until it closes."""
    loop = asyncio.get_running_loop()
    received: list = []
    closed = loop.create_future()
    _, channel = await loop.create_unix_connection(
        lambda: Channel(
            received.append,
            lambda exc: closed.done() or closed.set_result(exc),
            msgpack_codec(m.ToFrontEnd),
        ),
        w.socket,
    )
    channel.send(hello)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closed, 10)
    channel.close()
    return received


def test_a_front_end_of_another_build_is_refused_and_told_why():
    async def go():
        async with wired() as w:
            received = await hello_answer(w, m.Hello(m.VERSION + 1, 7, None, 0, 0))
            return received, w.server.frontends

    received, frontends = asyncio.run(go())
    assert len(received) == 1 and isinstance(received[0], m.Refused)
    assert "different builds" in received[0].reason and not frontends


@pytest.mark.parametrize(
    ("slots", "slot_bytes", "gone", "reason"),
    [
        (2, 4096, True, "No such file"),  # the segment left /dev/shm
        (20_000_000, 4096, False, "do not fit"),  # more slots than the segment holds
        (2, 1 << 40, False, "do not fit"),
        (-1, 4096, False, "slots"),
    ],
)
def test_a_front_end_whose_arena_cannot_be_attached_is_refused_and_told_why(
    slots, slot_bytes, gone, reason
):
    """Not dropped without a word (the front end would reconnect at once, for ever), nor
    taken at its word on the arena's size (a free list as long as it says, or rows written
    past the segment's end)."""
    from service.wire.arena import Arena

    async def go():
        async with wired() as w:
            owner = Arena(2, 4096)
            try:
                if gone:
                    owner.shm.unlink()
                started = time.monotonic()
                received = await hello_answer(
                    w, m.Hello(m.VERSION, 7, owner.name, slots, slot_bytes)
                )
                return received, time.monotonic() - started, w.server.frontends
            finally:
                owner.close()

    received, seconds, frontends = asyncio.run(go())
    assert [type(r) for r in received] == [m.Refused], received
    assert "front end 7's arena" in received[0].reason and reason in received[0].reason
    assert received[0].arena  # the front end may come back with another
    assert seconds < 1 and not frontends


def test_a_front_end_whose_arena_left_dev_shm_comes_back_with_a_new_one(caplog):
    """Refused for its arena alone (removed by a tmp cleaner, or systemd's RemoveIPC), a front
    end makes a new one and connects again, instead of failing for good."""

    async def go():
        async with wired() as w:
            client = EngineClient(w.settings, w.socket, slots=2, slot_bytes=SIZE * SIZE * 3 * 4)
            await client.start()
            old = client.arena.name
            client.arena.shm.unlink()  # before it connects: its mapping stays, the name goes
            assert await client.wait_connected(30)
            row, _ = await client.run("default", pixels(0), far())
            new = client.arena
            result = (old, new.name, new.free, row.shape, client.info("default").state)
            await client.stop()
            return result

    with caplog.at_level(logging.ERROR):
        old, new, free, shape, state = asyncio.run(go())
    assert new != old and free == 2 and shape == (10,) and state == "ready"
    assert "could not attach the arena" in caplog.text


def test_the_attaching_side_of_an_arena_hands_out_no_slots():
    from service.wire.arena import Arena

    owner = Arena(2, 4096)
    try:
        attached = Arena(2, 4096, name=owner.name)
        assert (owner.free, attached.free, attached.take()) == (2, 0, -1)
        assert attached.close()
    finally:
        owner.close()


def test_a_refused_front_end_reports_every_pipeline_failed_with_the_reason(tmp_path):
    """The client's side: an accelerator process that refuses it (another build)."""

    async def go():
        loop = asyncio.get_running_loop()
        socket = str(tmp_path / ENGINE_SOCKET)

        def refusing() -> Channel:
            channel: Channel

            def on_message(message):
                channel.send(m.Refused("version 1 against version 2: different builds"))
                channel.close()

            channel = Channel(on_message, None, msgpack_codec(m.ToEngine))
            return channel

        server = await loop.create_unix_server(refusing, socket)
        client = EngineClient(settings(), socket)
        await client.start()
        for _ in range(200):
            if client.info("default").state == "failed":
                break
            await asyncio.sleep(0.02)
        info = client.info("default")
        with pytest.raises(EngineUnavailable) as err:
            await client.run("default", pixels(), far())
        await client.stop()
        server.close()
        return info, err.value

    info, error = asyncio.run(go())
    assert info.state == "failed" and "different builds" in (info.error or "")
    assert "different builds" in error.message


def test_a_connection_dropped_before_welcome_is_retried_after_a_growing_pause(tmp_path, caplog):
    """An accelerator process that accepts the connection and drops it unanswered (its hello
    failed) is retried a few times a second at most, and said so once, not per attempt."""

    async def go():
        accepted = 0

        def dropping() -> Channel:
            nonlocal accepted
            accepted += 1
            channel: Channel

            def on_message(message):
                channel.close()

            channel = Channel(on_message, None, msgpack_codec(m.ToEngine))
            return channel

        socket = str(tmp_path / ENGINE_SOCKET)
        server = await asyncio.get_running_loop().create_unix_server(dropping, socket)
        client = EngineClient(settings(), socket, slots=2, slot_bytes=1024)
        await client.start()
        await asyncio.sleep(1.5)
        state = client.info("default").state
        await client.stop()
        server.close()
        return accepted, state

    with caplog.at_level(logging.DEBUG, logger="service.dataplane.engine_client"):
        accepted, state = asyncio.run(go())
    assert 2 <= accepted <= 5 and state == "loading"  # 0.2 s, 0.4 s, 0.8 s apart
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert len(said) == 1 and said[0][0] == "WARNING" and "without answering hello" in said[0][1]


def test_errors_cross_with_their_kind_code_and_details():
    for error in (
        ModelError("the model failed; error id abc", error_id="abc"),
        InvalidInput("bad", "invalid_shape", image=2),
        ShuttingDown("stopping"),
    ):
        wire = m.Error.of(error)
        encode, decode = msgpack_codec(m.ToFrontEnd)
        back = decode(memoryview(encode(m.Failed([1], wire)))).error.rebuild()
        assert type(back) is type(error)
        assert (back.message, back.code, back.details) == (
            error.message,
            error.code,
            error.details,
        )


def test_error_details_that_messagepack_cannot_hold_cross_as_plain_values():
    """Details may come from a user's cpu stage: NumPy scalars and arrays, any object."""
    error = InvalidInput("bad", norm=np.float32(3.5), sizes=np.arange(2), odd=Path("x"))
    encode, decode = msgpack_codec(m.ToFrontEnd)
    back = decode(memoryview(encode(m.Failed([1], m.Error.of(error))))).error.rebuild()
    assert back.details == {"norm": 3.5, "sizes": [0, 1], "odd": "x"}


async def answered(w: Wired, client: EngineClient, rids: list[int], slots: list[int]) -> dict:
    """Tickets for items the client waits for (as its own ``run`` records them), answered by
    the test; each item's answer, or the exception it got."""
    loop = asyncio.get_running_loop()
    frontend = next(iter(w.server.frontends))
    futures = {}
    for rid, slot in zip(rids, slots, strict=True):
        futures[rid] = loop.create_future()
        client._pending[rid] = (futures[rid], slot)
        frontend.pending[rid] = Ticket(frontend, rid, slot)
    return futures


def test_an_answer_that_cannot_be_sent_fails_its_items_and_loses_no_other_answer(monkeypatch):
    """One answer of a turn that cannot be built or encoded (a row a slot cannot take, an
    error whose details MessagePack cannot hold) fails its own items with an error id; the
    answers sent after it in that turn still go, and every slot comes back."""

    async def go():
        async with wired() as w:
            client = await w.client(slots=4)
            frontend = next(iter(w.server.frontends))
            slot = client.arena.take()
            futures = await answered(w, client, [9001, 9002, 9003], [slot, -1, -1])
            batch = BatchInfo(0.0, 0.0, 1, 1)
            frontend.pending[9001].set_result((np.array([object()]), batch))  # no slot holds it
            frontend.pending[9002].set_exception(ServeError("other"))
            frontend.pending[9003].set_result((np.ones(3, np.float32), batch))
            # Details nothing made plain: what Error.of would not let through, the guard catches.
            monkeypatch.setattr(
                engine_server,
                "_wire_error",
                lambda exc: m.Error("ServeError", "x", "y", {"k": ...}),
            )
            await asyncio.wait(futures.values(), timeout=5)
            got = {rid: f.exception() or f.result() for rid, f in futures.items() if f.done()}
            return got, client.arena.free

    got, free = asyncio.run(go())
    assert set(got) == {9001, 9002, 9003} and free == 4
    for rid in (9001, 9002):
        assert isinstance(got[rid], ServeError) and got[rid].status == 500
        assert "could not send this answer" in got[rid].message and got[rid].details["error_id"]
    assert got[9003][0].tolist() == [1.0, 1.0, 1.0]


def test_no_row_is_written_into_the_slots_of_a_front_end_that_went_away():
    """Its rows are dropped: once it has seen the loss, its slots hold its next items."""

    async def go():
        async with wired() as w:
            client = await w.client(slots=4)
            frontend = next(iter(w.server.frontends))
            slot = client.arena.take()
            client.arena.write(slot, np.zeros(3, np.float32))
            await answered(w, client, [9001, 9002], [slot, -1])  # 9002: still in a batch
            frontend.channel.transport.abort()  # lost before the turn's answers go
            frontend.pending[9001].set_result((np.ones(3, np.float32), BatchInfo(0, 0, 1, 1)))
            await asyncio.sleep(0.2)
            return frontend.gone, client.arena.view(slot, (3,), "<f4").tolist()

    gone, row = asyncio.run(go())
    assert gone and row == [0.0, 0.0, 0.0]


def far() -> float:
    return time.monotonic() + 60


def test_every_slot_of_an_arena_starts_on_a_64_byte_line():
    """So that the model can read a lone item in its slot in place, whatever the item's size
    (a 299x299 RGB image is not a multiple of 64 bytes)."""
    from service.wire.arena import Arena

    size = 299 * 299 * 3
    arena = Arena(4, size)
    try:
        views = [arena.view(slot, (299, 299, 3), "|u1") for slot in range(4)]
        assert [v.ctypes.data % 64 for v in views] == [0, 0, 0, 0]
        for slot, view in enumerate(views):
            view[...] = slot
        arena.write_rows([1, 3], np.full((2, 10), 7, np.float32))
        rows = [np.frombuffer(v.tobytes()[:40], np.float32).tolist() for v in views]
        assert rows[1] == rows[3] == [7.0] * 10
        assert (views[0] == 0).all() and (views[2] == 2).all()  # untouched, to their last byte
        del views
    finally:
        arena.close()


def test_an_arena_is_not_unmapped_under_a_view_of_it():
    """The accelerator process unmaps a departed front end's arena once no view of it is left
    (``EngineServer.release``): ``close`` must refuse while a view lives, as reading a view of
    an unmapped segment crashes the process. Checked in a child process, which the crash would
    end with SIGSEGV instead of failing this test run."""
    code = """
import numpy as np
from service.wire.arena import Arena

owner = Arena(2, 4096)
engine = Arena(2, 4096, name=owner.name)
owner.write(1, np.full(4096, 7, np.uint8))
view = engine.view(1, (64, 64), "|u1")
print("closed" if engine.close() else "refused", flush=True)
print(int(view.sum()), flush=True)  # reads the slot: a crash if it was unmapped
del view
print("closed" if engine.close() else "refused", flush=True)
assert owner.close()
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    assert done.stdout.split() == ["refused", str(7 * 4096), "closed"]
