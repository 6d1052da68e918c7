"""The reader and answer order of a ``ModelStreamInfer`` stream (``grpc.servicer.Stream``):
how far it reads ahead, in what order it answers, and how it ends."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from service.errors import InvalidInput, NotReady
from service.grpc.servicer import Stream


@dataclass
class Request:
    id: int
    size: int = 10

    def ByteSize(self) -> int:  # noqa: N802 (protobuf's name)
        return self.size


class Client:
    """The client's side: requests put on an inbox, the count the reader took."""

    def __init__(self, requests=(), end: bool = True, error: Exception | None = None):
        self.inbox: asyncio.Queue = asyncio.Queue()
        for r in requests:
            self.inbox.put_nowait(r)
        if end:
            self.inbox.put_nowait(error)
        self.taken = 0

    async def requests(self):
        while True:
            item = await self.inbox.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            self.taken += 1
            yield item


class Answers:
    """Answers that wait until released, one event per request id."""

    def __init__(self):
        self.release: dict[int, asyncio.Event] = {}
        self.started: list[int] = []
        self.cancelled: list[int] = []

    def gate(self, rid: int) -> asyncio.Event:
        return self.release.setdefault(rid, asyncio.Event())

    async def __call__(self, request: Request) -> str:
        self.started.append(request.id)
        try:
            await self.gate(request.id).wait()
        except asyncio.CancelledError:
            self.cancelled.append(request.id)
            raise
        return f"answer {request.id}"


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def collect(stream: Stream) -> list:
    return [a async for a in stream.answers()]


def test_reads_ahead_up_to_the_depth_and_answers_in_order():
    async def main():
        client, answers = Client([Request(i) for i in range(10)]), Answers()
        stream = Stream(client.requests(), answers, depth=4, budget=1 << 20)
        out = asyncio.ensure_future(collect(stream))
        await settle()
        assert client.taken == 4 and answers.started == [0, 1, 2, 3]
        for i in reversed(range(10)):  # finished last to first
            answers.gate(i).set()
        assert await out == [f"answer {i}" for i in range(10)]
        assert client.taken == 10

    asyncio.run(main())


def test_stops_reading_once_the_messages_in_flight_reach_the_budget():
    async def main():
        client, answers = Client([Request(i, size=400) for i in range(6)]), Answers()
        stream = Stream(client.requests(), answers, depth=32, budget=1000)
        out = asyncio.ensure_future(collect(stream))
        await settle()
        assert client.taken == 3  # 400 + 400 + 400: the third crossed the budget
        answers.gate(0).set()
        await settle()
        assert client.taken == 4  # 800 in flight: room for one more
        for i in range(6):
            answers.gate(i).set()
        assert len(await out) == 6

    asyncio.run(main())


def test_an_error_of_the_reader_comes_after_the_answers_of_what_it_read():
    async def main():
        bad = InvalidInput("not a request", "invalid_message")
        client = Client([Request(0), Request(1)], error=bad)
        answers = Answers()
        for i in (0, 1):
            answers.gate(i).set()
        got = []
        with pytest.raises(InvalidInput):
            async for a in Stream(client.requests(), answers, depth=4, budget=1 << 20).answers():
                got.append(a)
        assert got == ["answer 0", "answer 1"]

    asyncio.run(main())


def test_the_drain_answers_what_was_read_then_ends_unavailable():
    async def main():
        client = Client([Request(0), Request(1)], end=False)  # then the client waits
        answers = Answers()
        stream = Stream(client.requests(), answers, depth=4, budget=1 << 20)
        got: list = []

        async def read():
            async for a in stream.answers():
                got.append(a)

        out = asyncio.ensure_future(read())
        await settle()
        stream.end()
        client.inbox.put_nowait(Request(2))  # after the drain: never read
        await settle()
        answers.gate(0).set()
        answers.gate(1).set()
        with pytest.raises(NotReady, match="draining"):
            await out
        assert got == ["answer 0", "answer 1"] and client.taken == 2

    asyncio.run(main())


def test_a_cancelled_stream_cancels_the_requests_in_flight():
    async def main():
        client = Client([Request(i) for i in range(3)], end=False)
        answers = Answers()
        out = asyncio.ensure_future(
            collect(Stream(client.requests(), answers, depth=4, budget=1 << 20))
        )
        await settle()
        assert answers.started == [0, 1, 2]
        out.cancel()
        await settle()
        assert sorted(answers.cancelled) == [0, 1, 2]

    asyncio.run(main())


def test_the_drain_after_the_client_sent_its_last_request_ends_the_stream_as_usual():
    async def main():
        client, answers = Client([Request(0)]), Answers()  # then the client half-closes
        stream = Stream(client.requests(), answers, depth=4, budget=1 << 20)
        out = asyncio.ensure_future(collect(stream))
        await settle()
        assert stream.reader.done()
        stream.end()
        answers.gate(0).set()
        assert await out == ["answer 0"]

    asyncio.run(main())
