# ruff: noqa: T201  (a command-line tool: it reports on stdout)
"""Cluster DNS stand-in of `make e2e`: answers `<service>.<namespace>.svc.<domain>` with the
Service's ClusterIP, read from the API server, and nothing else.

CoreDNS is an image this machine cannot pull, and the pods only ever look up Services (the
helm test pod, Locust's workers finding their master, Locust's target). Every other name is
NXDOMAIN: nothing is forwarded, so no pod's lookup leaves the machine. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import struct
import threading
import time
import urllib.request

TYPE_A, TYPE_AAAA, CLASS_IN = 1, 28, 1
NOERROR, SERVFAIL, NXDOMAIN, NOTIMP = 0, 2, 3, 4


class Services:
    """ClusterIPs by (namespace, name), polled from the API server."""

    def __init__(self, server: str, ca: str, cert: str, key: str, interval: float) -> None:
        self.url = server.rstrip("/") + "/api/v1/services"
        self.context = ssl.create_default_context(cafile=ca)
        self.context.load_cert_chain(cert, key)
        self.interval = interval
        self.ips: dict[tuple[str, str], str] = {}
        self.lock = threading.Lock()

    def poll_forever(self) -> None:
        while True:
            try:
                with urllib.request.urlopen(self.url, context=self.context, timeout=5) as r:
                    items = json.load(r)["items"]
                ips = {
                    (s["metadata"]["namespace"], s["metadata"]["name"]): s["spec"]["clusterIP"]
                    for s in items
                    if s["spec"].get("clusterIP") not in (None, "", "None")
                }
                with self.lock:
                    self.ips = ips
            except (OSError, ValueError, KeyError) as exc:
                print(f"dns: listing services failed: {exc}", flush=True)
            time.sleep(self.interval)

    def lookup(self, namespace: str, name: str) -> str | None:
        with self.lock:
            return self.ips.get((namespace, name))


def parse_question(packet: bytes) -> tuple[int, int, str, int, int, int]:
    """(id, flags, name, qtype, qclass, offset after the question)."""
    ident, flags, qdcount = struct.unpack(">HHH", packet[:6])
    if qdcount != 1:
        raise ValueError("one question per query")
    labels, offset = [], 12
    while True:
        length = packet[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0:
            raise ValueError("compressed question name")
        labels.append(packet[offset : offset + length].decode("ascii").lower())
        offset += length
    qtype, qclass = struct.unpack(">HH", packet[offset : offset + 4])
    return ident, flags, ".".join(labels), qtype, qclass, offset + 4


def answer(packet: bytes, services: Services, domain: str) -> bytes:
    try:
        ident, flags, name, qtype, qclass, end = parse_question(packet)
    except (ValueError, IndexError, UnicodeDecodeError, struct.error):
        return b""
    question = packet[12:end]
    rd = flags & 0x0100
    rcode, records = NXDOMAIN, b""
    suffix = f".svc.{domain}"
    parts = name[: -len(suffix)].split(".") if name.endswith(suffix) else []
    if qclass != CLASS_IN:
        rcode = NOTIMP
    elif len(parts) == 2:
        ip = services.lookup(parts[1], parts[0])
        if ip is not None:
            rcode = NOERROR
            if qtype == TYPE_A:
                # The name as a pointer to the question (offset 12), TTL 5 s, 4 bytes of address.
                records = struct.pack(">HHHIH", 0xC00C, TYPE_A, CLASS_IN, 5, 4)
                records += socket.inet_aton(ip)
    header = struct.pack(
        ">HHHHHH", ident, 0x8400 | rd | 0x0080 | rcode, 1, 1 if records else 0, 0, 0
    )
    return header + question + records


def serve_udp(sock: socket.socket, services: Services, domain: str) -> None:
    while True:
        packet, peer = sock.recvfrom(512)
        reply = answer(packet, services, domain)
        if reply:
            sock.sendto(reply, peer)


def serve_tcp(sock: socket.socket, services: Services, domain: str) -> None:
    while True:
        conn, _ = sock.accept()
        with conn:
            conn.settimeout(5)
            try:
                (length,) = struct.unpack(">H", conn.recv(2))
                reply = answer(conn.recv(length), services, domain)
                if reply:
                    conn.sendall(struct.pack(">H", len(reply)) + reply)
            except (OSError, struct.error):
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="address to answer on (port 53)")
    parser.add_argument("--server", required=True, help="API server URL")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--domain", default="cluster.local")
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    services = Services(args.server, args.ca, args.cert, args.key, args.interval)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((args.listen, 53))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((args.listen, 53))
    tcp.listen(16)
    threading.Thread(target=services.poll_forever, daemon=True).start()
    threading.Thread(target=serve_tcp, args=(tcp, services, args.domain), daemon=True).start()
    print(f"dns: answering *.svc.{args.domain} on {args.listen}:53", flush=True)
    serve_udp(udp, services, args.domain)


if __name__ == "__main__":
    main()
