"""The gRPC server of one front-end process, on the pod's gRPC port.

Every front end binds the port with ``SO_REUSEPORT`` and the kernel spreads new connections
over them, as the HTTP port's one socket is shared. A gRPC channel is one long-lived HTTP/2
connection, so one channel's calls all go to one front end: a client that should use the whole
pod opens several channels (``docs/PROTOCOLS.md``).

Started by the application's lifespan (``app.py``), and stopped as soon as the process drains
(SIGTERM), while the HTTP side still finishes its requests: the server takes no new call and
sends GOAWAY, so that clients open their next calls on another pod instead of retrying into
this one, and the calls in flight finish within ``SERVE_GRACEFUL_TIMEOUT_S``. From the drain
on the health service says NOT_SERVING (as ``/readyz``), and an inference call that arrives
before the stop has begun is answered UNAVAILABLE. An inference stream (``ModelStreamInfer``)
reads no request after the drain: it answers those it read, and ends UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

from ..auth import load_tokens
from ..dataplane.dataplane import DataPlane
from ..metrics import Metrics
from ..settings import Settings
from . import http2
from .gate import Gate, Limits
from .health import HealthServicer
from .native import NativeServer
from .servicer import DESCRIPTOR, SERVICE, InferenceServicer

log = logging.getLogger(__name__)

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
# A dead peer's connection is found by the server's keep-alive pings within this long.
KEEPALIVE_TIMEOUT_MS = 20_000
# A connection must send its preface, and acknowledge the server's SETTINGS, within this long
# (a client does both in one round trip). Until it acknowledges them, the server's limits on
# header lists are not in force for it (HTTP/2 applies settings once acknowledged): a client
# that never does could otherwise hold up to 16 MiB of metadata per stream.
HANDSHAKE_TIMEOUT_MS = 5_000


def options(settings: Settings) -> list[tuple[str, int]]:
    """The gRPC core's limits of one connection (docs/RELIABILITY.md, "HTTP/2 and gRPC")."""
    return [
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
        ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        # Past the hard limit every call is refused; between the soft and the hard limit, a
        # growing share of them (gRPC's own relation between the two is about this one).
        ("grpc.max_metadata_size", settings.grpc_max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", 2 * settings.grpc_max_metadata_bytes),
        ("grpc.max_connection_idle_ms", int(settings.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_time_ms", int(settings.grpc_keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
        ("grpc.http2.settings_timeout", HANDSHAKE_TIMEOUT_MS),
    ]


def transport_limits(settings: Settings) -> http2.Limits:
    """The native server's limits of one connection: grpcio's of :func:`options`."""
    return http2.Limits(
        max_streams=settings.grpc_max_concurrent_streams,
        message_bytes=settings.grpc_max_message_bytes,
        metadata_bytes=settings.grpc_max_metadata_bytes,
        idle_s=settings.keepalive_timeout_s,
        keepalive_s=settings.grpc_keepalive_s,
        handshake_s=HANDSHAKE_TIMEOUT_MS / 1000,
        ping_timeout_s=KEEPALIVE_TIMEOUT_MS / 1000,
    )


class GrpcServer:
    """Args:
    plane: the front end's dataplane.
    metrics: its metrics.
    port: the TCP port (the host is ``SERVE_HOST``).
    """

    def __init__(self, plane: DataPlane, metrics: Metrics, port: int):
        settings = plane.settings
        self.grace_s = settings.graceful_timeout_s
        limits = Limits(
            settings.grpc_max_message_bytes,
            settings.grpc_message_timeout_s,
            max(settings.grpc_message_timeout_s, settings.keepalive_timeout_s),
        )
        gate = Gate(limits, load_tokens(settings), metrics)
        names = (SERVICE, HEALTH.full_name, reflection.SERVICE_NAME)
        self.inference = InferenceServicer(plane, metrics)
        services = (
            (DESCRIPTOR, self.inference, True),
            (HEALTH, HealthServicer(plane, (SERVICE,)), False),
            (REFLECTION, ReflectionServicer(names), False),
        )
        host = settings.host
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.server: grpc.aio.Server | NativeServer
        # Either raises RuntimeError when the port cannot be bound: the front end does not start.
        if settings.grpc_server == "native":
            routes = {}
            for descriptor, servicer, metered in services:
                routes.update(gate.routes(descriptor, servicer, metered))
            self.server = NativeServer(routes, transport_limits(settings), host, port)
            self.port = self.server.port
        else:
            self.server = grpc.aio.server(options=options(settings))
            self.server.add_generic_rpc_handlers(
                tuple(gate.service(d, servicer, metered) for d, servicer, metered in services)
            )
            self.port = self.server.add_insecure_port(address)
        self.address = address
        self.kind = settings.grpc_server
        self._stopping: asyncio.Future | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.server.start()
        log.info("gRPC (%s) on %s", self.kind, self.address)

    def drain(self) -> None:
        """Begin :meth:`stop` (from a signal handler too: it only schedules)."""
        self._loop.call_soon_threadsafe(self._begin_stop)

    def _begin_stop(self) -> asyncio.Future:
        if self._stopping is None:
            self.inference.end_streams()
            self._stopping = asyncio.ensure_future(self.server.stop(self.grace_s))
        return self._stopping

    async def stop(self) -> None:
        """Refuse new calls; those in flight get the graceful timeout to finish."""
        await self._begin_stop()
