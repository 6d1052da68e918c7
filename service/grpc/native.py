"""The ``native`` gRPC server (``SERVE_GRPC_SERVER=native``): gRPC calls on the front end's own
event loop, over this project's HTTP/2 (``http2.py``) instead of grpcio's core.

The calls are the gate's (``gate.py``: the token, the message read, bounded and parsed, the
metrics, the errors mapped onto statuses) and the servicers' as with grpcio: this module only
routes a stream's ``:path`` to the gate's handler and gives it a :class:`Context` with what the
gate and the servicers use of ``grpc.aio.ServicerContext`` (the metadata, the next message,
the time left, ``abort``). What differs from grpcio is the transport's cost per call and where
its limits are enforced (``http2.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

import grpc

from .gate import Route
from .http2 import Connection, Limits, Stream, StreamReset

log = logging.getLogger(__name__)

UNIMPLEMENTED, INTERNAL = 12, 13


class Context:
    """What the gate and the servicers use of ``grpc.aio.ServicerContext``, for one call."""

    __slots__ = ("stream", "code", "details", "trailing")

    def __init__(self, stream: Stream):
        self.stream = stream
        self.code = grpc.StatusCode.UNKNOWN
        self.details = ""
        self.trailing: tuple = ()

    def invocation_metadata(self) -> tuple:
        return self.stream.metadata()

    async def read(self) -> Any:
        message = await self.stream.read()
        return grpc.aio.EOF if message is None else message

    async def read_within(self, timeout: float) -> bytes | bytearray | None:
        """The next message, or None at the end of the client's side; ``TimeoutError`` when
        none completes within ``timeout`` (the gate's bound, without a task per read)."""
        return await self.stream.read(timeout)

    def time_remaining(self) -> float | None:
        deadline = self.stream.deadline
        return None if deadline is None else deadline - self.stream.conn.loop.time()

    def cancelled(self) -> bool:
        return self.stream.error is not None

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        self.code = code
        self.details = details
        self.trailing = tuple(trailing_metadata)
        raise grpc.aio.AbortError(details)


class NativeServer:
    """Listens on ``host:port`` (bound here, ``SO_REUSEPORT``: the front ends share the port)
    and serves ``routes``.

    Args:
        routes: the handler of each method, by its path (``gate.routes``).
        limits: every connection's limits.
        host: the address to bind.
        port: the TCP port; 0 picks one.
    """

    def __init__(self, routes: dict[bytes, Route], limits: Limits, host: str, port: int):
        self.routes = routes
        self.limits = limits
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self.sock = socket.create_server(
                (host, port), family=family, reuse_port=True, backlog=1024
            )
        except OSError as exc:
            raise RuntimeError(f"cannot bind the gRPC port {host}:{port}: {exc}") from exc
        self.port = self.sock.getsockname()[1]
        self.connections: set[Connection] = set()
        self.listener: asyncio.Server | None = None
        self.closed = asyncio.Event()

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.listener = await self.loop.create_server(self._connection, sock=self.sock)

    def _connection(self) -> Connection:
        conn = Connection(self.limits, self._dispatch, self._closed)
        self.connections.add(conn)
        return conn

    def _closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self.closed.set()

    def _dispatch(self, stream: Stream) -> asyncio.Future | None:
        route = self.routes.get(stream.path)
        if route is None:
            path = stream.path.decode("latin-1")
            stream.finish(UNIMPLEMENTED, f"Method not found: {path}")
            return None
        runner = self._streaming if route.streaming else self._unary
        return self.loop.create_task(runner(route, stream))

    async def _unary(self, route: Route, stream: Stream) -> None:
        context = Context(stream)
        try:
            answer = await route.call.unary(None, context)
        except grpc.aio.AbortError:
            stream.finish(context.code.value[0], context.details, context.trailing)
            return
        except (asyncio.CancelledError, StreamReset):
            return  # the stream is gone (or answered by the transport, as a deadline)
        except Exception:  # the gate answers every error; this is its own failure
            log.exception("gRPC call %s failed", route.name)
            stream.finish(INTERNAL, "internal error")
            return
        stream.answer(route.serialize(answer))

    async def _streaming(self, route: Route, stream: Stream) -> None:
        context = Context(stream)
        answers: Any = route.call.streaming(None, context)  # an async generator
        try:
            async for answer in answers:
                stream.send_message(route.serialize(answer))
                if stream.out_bytes or stream.conn.paused:
                    await stream.drained()
        except grpc.aio.AbortError:
            stream.finish(context.code.value[0], context.details, context.trailing)
            return
        except (asyncio.CancelledError, StreamReset):
            return
        except Exception:
            log.exception("gRPC call %s failed", route.name)
            stream.finish(INTERNAL, "internal error")
            return
        finally:
            with contextlib.suppress(BaseException):
                await answers.aclose()
        stream.finish(0)

    async def stop(self, grace_s: float) -> None:
        """The drain: no new connections, GOAWAY on each (no new calls), the calls in flight
        given ``grace_s`` to finish; then the connections left are closed and their calls
        cancelled."""
        if self.listener is not None:
            self.listener.close()
        if not self.connections:
            return
        self.closed.clear()
        for conn in list(self.connections):
            conn.goaway()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), grace_s)
        for conn in list(self.connections):
            conn.close()
        # Let the cancelled calls unwind before the loop goes on to stop.
        await asyncio.sleep(0)
