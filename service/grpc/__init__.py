"""KServe V2 / Open Inference Protocol over gRPC (``inference.GRPCInferenceService``, as Triton
publishes it), with ``grpc.health.v1`` and server reflection.

Served by every front-end process next to its HTTP server, on ``SERVE_GRPC_PORT``, from the
same dataplane: the same models (and their ``<model>-pixels`` views), admission bound,
deadlines, metrics and drain. ``server.py`` starts it, ``servicer.py`` answers the calls,
``codec.py`` turns messages into the dataplane's requests and back, ``errors.py`` maps the
service's errors onto status codes, ``health.py`` answers probes. ``generated/`` is protoc's
output (``scripts/grpc_stubs.py`` regenerates it).
"""
