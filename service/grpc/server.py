"""The gRPC server of one front-end process, on the pod's gRPC port.

Every front end binds the port with ``SO_REUSEPORT`` and the kernel spreads new connections
over them, as the HTTP port's one socket is shared. A gRPC channel is one long-lived HTTP/2
connection, so one channel's calls all go to one front end: a client that should use the whole
pod opens several channels (``docs/PROTOCOLS.md``).

Started and stopped by the application's lifespan (``app.py``): on drain the health service
turns NOT_SERVING at once (as ``/readyz``), new inference calls are answered UNAVAILABLE, and
``stop`` lets the calls in flight finish within ``SERVE_GRACEFUL_TIMEOUT_S``.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..api.auth import load_tokens
from ..dataplane.dataplane import DataPlane
from ..metrics import Metrics
from .generated import grpc_service_pb2_grpc as pb_grpc
from .health import HealthServicer
from .servicer import SERVICE, InferenceServicer

log = logging.getLogger(__name__)


class GrpcServer:
    """Args:
    plane: the front end's dataplane.
    metrics: its metrics.
    port: the TCP port (the host is ``SERVE_HOST``).
    """

    def __init__(self, plane: DataPlane, metrics: Metrics, port: int):
        settings = plane.settings
        self.grace_s = settings.graceful_timeout_s
        limit = settings.grpc_max_message_bytes
        self.server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(plane, metrics, load_tokens(settings)), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(plane, (SERVICE,)), self.server)
        names = (
            SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, self.server)
        host = settings.host
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # Raises RuntimeError when the port cannot be bound: the front end does not start.
        self.port = self.server.add_insecure_port(address)
        self.address = address

    async def start(self) -> None:
        await self.server.start()
        log.info("gRPC on %s", self.address)

    async def stop(self) -> None:
        """Refuse new calls; those in flight get the graceful timeout to finish."""
        await self.server.stop(self.grace_s)
