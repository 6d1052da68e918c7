"""Real HTTP/2 proxies in front of a gRPC port, for the interoperability tests: nginx's
``grpc_pass`` (what ingress-nginx runs for a gRPC backend) and HAProxy with ``proto h2`` on
both sides. Each runs in the foreground on a free loopback port, with its configuration, logs
and temporary files in a folder of the test's, and is stopped by the caller.

Debian's ``nginx`` and ``haproxy`` (``make proxies``, a prerequisite of ``make test``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.helpers import free_port

NGINX = """\
{user}worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} http2;
        client_max_body_size 64m;
        location / {{
            grpc_pass grpc://{upstream};
            grpc_read_timeout 60s;
            grpc_send_timeout 60s;
        }}
    }}
}}
"""

HAPROXY = """\
global
    maxconn 256
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend grpc
    bind 127.0.0.1:{port} proto h2
    default_backend service
backend service
    server service {upstream} proto h2
"""


def _binary(name: str) -> str:
    # Debian installs both in /usr/sbin, which a user's PATH may not hold.
    return shutil.which(name) or f"/usr/sbin/{name}"


def _nginx(upstream: str, folder: Path, port: int) -> list[str]:
    # A master started as root runs its worker as nobody, who cannot enter pytest's folders.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = folder / "nginx.conf"
    conf.write_text(NGINX.format(user=user, dir=folder, port=port, upstream=upstream))
    return [_binary("nginx"), "-p", str(folder), "-c", str(conf)]


def _haproxy(upstream: str, folder: Path, port: int) -> list[str]:
    conf = folder / "haproxy.cfg"
    conf.write_text(HAPROXY.format(port=port, upstream=upstream))
    return [_binary("haproxy"), "-db", "-f", str(conf)]


PROXIES: dict[str, Callable[[str, Path, int], list[str]]] = {
    "nginx": _nginx,
    "haproxy": _haproxy,
}


def start_proxy(name: str, upstream: str, folder: Path) -> tuple[subprocess.Popen, str]:
    """Start ``name`` forwarding HTTP/2 (h2c) to ``upstream`` (host:port); its process and
    the host:port it listens on, once it accepts connections."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with (folder / "stderr.log").open("wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            PROXIES[name](upstream, folder, port), stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {process.returncode}: "
                + (folder / "stderr.log").read_text(errors="replace")
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{name} did not listen on {port} within 20 s")


def stop_proxy(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
