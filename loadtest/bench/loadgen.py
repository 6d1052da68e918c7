"""A closed-loop HTTP load from several processes, in the standard library alone (for machines
with no ``wrk`` and no network, such as a lent GPU machine).

Each process keeps ``connections`` keep-alive connections busy with the same request, reads
each answer by its Content-Length, and counts what ends inside the measured window; a
connection that fails counts an error and is opened again. A request
costs it a few tens of µs of CPU; its CPU seconds are reported beside the figures.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from loadtest.common import percentile


def _request(path: str, body: bytes, content_type: str, host: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# A request that got no answer: the connection failed (refused, reset, closed mid-answer).
ERROR = 0


async def _connection(host, port, request, start_at, stop_at, out) -> None:  # type: ignore[no-untyped-def]
    """One client: a keep-alive connection, opened again after any failure (each failure
    recorded as ``ERROR``), so the offered load stays ``connections`` clients."""
    writer = None
    while time.monotonic() < stop_at:
        t0 = time.monotonic()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            status = ERROR
            if writer is not None:
                writer.close()
                writer = None
            await asyncio.sleep(0.01)  # a refused connection is no reason to spin
        t1 = time.monotonic()
        if start_at <= t1 <= stop_at:
            out.append((status, t1 - t0))
    if writer is not None:
        writer.close()


def _process(url, path, body, content_type, connections, start_at, stop_at, queue) -> None:  # type: ignore[no-untyped-def]
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    request = _request(path, body, content_type, f"{host}:{port}")
    results: list[tuple[int, float]] = []

    async def main() -> None:
        await asyncio.gather(
            *(
                _connection(host, port, request, start_at, stop_at, results)
                for _ in range(connections)
            ),
            return_exceptions=True,
        )

    cpu0 = os.times()
    asyncio.run(main())
    cpu1 = os.times()
    queue.put((results, (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)))


def closed_loop(
    url: str,
    body: bytes,
    *,
    path: str = "/v1/classify",
    content_type: str = "image/jpeg",
    processes: int = 4,
    connections: int = 32,
    seconds: float = 10.0,
    warmup_s: float = 3.0,
    during: Callable[[float, float], None] | None = None,
) -> dict:
    """``processes`` x ``connections`` clients for ``warmup_s`` + ``seconds``; figures over the
    measured window: 200s per second, their p50/p99, non-200 answers, requests that got no
    answer (``errors``), the generator's CPU. ``during(start, stop)``, if given, runs in a
    thread meanwhile, with the measured window's ``time.monotonic()`` bounds (one clock for
    every process of the machine), to read what the load does to the server."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    # The window is set here, not in each process, so that every process and ``during``
    # measure the same seconds: 1 s for the processes to start (a spawn takes well under
    # that), then the warm-up, then the window.
    start_at = time.monotonic() + 1.0 + warmup_s
    stop_at = start_at + seconds
    args = (url, path, body, content_type, connections, start_at, stop_at, queue)
    procs = [ctx.Process(target=_process, args=args) for _ in range(processes)]
    for p in procs:
        p.start()
    watcher = None
    if during is not None:
        watcher = threading.Thread(target=during, args=(start_at, stop_at), daemon=True)
        watcher.start()
    gathered = [queue.get(timeout=warmup_s + seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    if watcher is not None:
        watcher.join(30)
    ok = sorted(t for results, _ in gathered for status, t in results if status == 200)
    statuses = [status for results, _ in gathered for status, _ in results]
    errors = statuses.count(ERROR)
    cpu = sum(c for _, c in gathered)
    return {
        "clients": processes * connections,
        "requests_per_s": len(ok) / seconds,
        "p50_ms": 1000 * percentile(ok, 50),
        "p99_ms": 1000 * percentile(ok, 99),
        "non_200": len(statuses) - len(ok) - errors,
        "errors": errors,
        "loadgen_cpu_ms_per_request": 1000 * cpu / max(len(ok), 1),
    }
