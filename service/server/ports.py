"""The pod's ports (HTTP and gRPC), which all its front ends serve.

Every front end listens on each port with a socket of its own (``SO_REUSEPORT``), and the
kernel hashes each new connection to one of the listening sockets: the connections of many
clients spread evenly over the front ends, whatever each front end is doing when they arrive.
One listening socket shared by all, each accepting in turn, hands a burst of connections to
whichever front end wakes first: of 256 keep-alive connections opened at once, one of 8 front
ends took 86 and another 16 (docs/BENCHMARKS.md, "Connections over the front ends"), and a
closed-loop client's latency then depends on the front end it landed on while the others'
cores wait.

The supervisor *claims* each port before any front end starts: a port that another program,
or another copy of this service, listens on stops the pod at once, and the claim (a bound
socket that never listens, so it gets no connections) keeps the port while front ends come
and go.
"""

from __future__ import annotations

import socket


def _socket(host: str) -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)


def claim(host: str, port: int) -> socket.socket:
    """Hold ``host:port`` for this pod's front ends; ``OSError`` if something else has it.

    ``SO_REUSEPORT`` alone would let another copy of this service (same user) bind beside it
    and take a share of the connections, so the port is first bound without it, which fails
    while any socket listens there. ``SO_REUSEADDR`` on both lets a restart bind while the
    last run's connections linger in TIME_WAIT (it also lets that probe past another copy's
    bare claim, in the seconds before that copy's front ends listen).
    """
    with _socket(host) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    return bind(host, port)  # never listens: no connection is hashed to it


def bind(host: str, port: int) -> socket.socket:
    """A front end's own socket on a port the supervisor claimed, bound but not listening: the
    HTTP server listens on it once it serves (``loop.create_server(sock=...)``). The kernel
    hashes connections only to listening sockets, so none waits in the queue of a front end
    that is still starting (the pod's first ones, or one replacing another)."""
    sock = _socket(host)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
