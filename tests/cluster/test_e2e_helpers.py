"""The pieces of `make e2e` (scripts/e2e/) that run without a cluster: the DNS stand-in's
answers, read back with a real resolver's wire format, and the wheelhouse's marker check."""

from __future__ import annotations

import importlib.util
import socket
import struct
import sys
import threading
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "e2e" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


dns = load("dns")
checks = load("checks")


def query(name: str, qtype: int = 1, ident: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return (
        struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0)
        + labels
        + b"\0"
        + struct.pack(">HH", qtype, 1)
    )


def parse(reply: bytes) -> tuple[int, int, list[str]]:
    """(id, rcode, A records)."""
    ident, flags, _, ancount, _, _ = struct.unpack(">HHHHHH", reply[:12])
    offset = 12
    while reply[offset]:
        offset += reply[offset] + 1
    offset += 5
    records = []
    for _ in range(ancount):
        _, rtype, _, _, length = struct.unpack(">HHHIH", reply[offset : offset + 12])
        offset += 12
        if rtype == 1:
            records.append(socket.inet_ntoa(reply[offset : offset + length]))
        offset += length
    return ident, flags & 0xF, records


@pytest.fixture
def services():
    s = dns.Services.__new__(dns.Services)
    s.lock = threading.Lock()
    s.ips = {("resnet-e2e", "e2e-resnet-serve"): "10.213.0.17"}
    return s


def test_a_service_name_resolves_to_its_cluster_ip(services):
    reply = dns.answer(
        query("e2e-resnet-serve.resnet-e2e.svc.cluster.local"), services, "cluster.local"
    )
    assert parse(reply) == (0x1234, 0, ["10.213.0.17"])


def test_a_known_name_has_no_ipv6_address(services):
    reply = dns.answer(
        query("e2e-resnet-serve.resnet-e2e.svc.cluster.local", 28), services, "cluster.local"
    )
    assert parse(reply) == (0x1234, 0, [])


@pytest.mark.parametrize(
    "name",
    [
        "other.resnet-e2e.svc.cluster.local",  # unknown Service
        "e2e-resnet-serve.resnet-e2e.svc.resnet-e2e.svc.cluster.local",  # a search-path try
        "pypi.org",  # never forwarded: nothing leaves the machine
    ],
)
def test_every_other_name_is_nxdomain(services, name):
    assert parse(dns.answer(query(name), services, "cluster.local"))[1] == 3


def test_garbage_gets_no_answer(services):
    assert dns.answer(b"\x00\x01", services, "cluster.local") == b""


def wheel(folder: Path, name: str, requires: list[str]) -> None:
    with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as z:
        meta = "Metadata-Version: 2.1\nName: " + name + "\nVersion: 1.0\n"
        meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
        z.writestr(f"{name}-1.0.dist-info/METADATA", meta)


def test_wheel_gaps_follow_the_images_python_not_this_one(tmp_path):
    wheel(tmp_path, "redis", ['async-timeout>=4.0.3; python_full_version < "3.11.3"', "pyjwt>=2"])
    wheel(tmp_path, "pyjwt", ['cryptography; extra == "crypto"'])
    assert checks.wheel_gaps(tmp_path, "3.11.2") == ["async-timeout>=4.0.3"]
    assert checks.wheel_gaps(tmp_path, "3.11.7") == []
