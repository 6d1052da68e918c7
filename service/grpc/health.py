"""``grpc.health.v1.Health``: what Kubernetes gRPC probes and grpc-health-probe ask.

Answered from the dataplane's own state at each call, so it can never disagree with HTTP:

* ``""`` and ``inference.GRPCInferenceService``: ``/readyz`` (SERVING once every pipeline's
  default model is warmed; NOT_SERVING while loading and from the moment the process drains);
* ``liveness``: ``/healthz`` (NOT_SERVING only once model loading failed), for a liveness
  probe over gRPC;
* any other name: NOT_FOUND (``Check``) or SERVICE_UNKNOWN (``Watch``), as the protocol says.

No token is asked: probes carry none (as ``SERVE_AUTH_EXEMPT_PATHS`` exempts HTTP's). The
messages are read and parsed by ``gate.py``, like every service's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..dataplane.dataplane import DataPlane
from ..errors import NotFound

LIVENESS = "liveness"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
# How often a Watch stream looks at the state (the protocol pushes changes).
WATCH_INTERVAL_S = 0.5


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, plane: DataPlane, readiness_services: tuple[str, ...]):
        self.plane = plane
        self.readiness = frozenset(("", *readiness_services))

    def status(self, service: str) -> int | None:
        """The service's status now; None: not a service this server knows."""
        if service in self.readiness:
            return SERVING if self.plane.ready else NOT_SERVING
        if service == LIVENESS:
            return NOT_SERVING if self.plane.fallback.state == "failed" else SERVING
        return None

    async def Check(self, request, context):
        status = self.status(request.service)
        if status is None:
            raise NotFound(f"unknown service {request.service!r}", "unknown_service")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request, context) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:
            status = self.status(request.service)
            status = SERVICE_UNKNOWN if status is None else status
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if self.plane.draining:  # its last word: the stream must not hold up the drain
                return
            await asyncio.sleep(WATCH_INTERVAL_S)
