"""Quick fuzz of the decode path (the full one: `make reliability`), and the schema-driven fuzz
of every route of a running server (schemathesis)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.harness import DecodeSandbox, die, hang_forever
from tests.support.helpers import HARDENED_TOKEN
from tests.system.security.fuzz_decode import FORMATS, fuzz


@pytest.fixture(scope="module")
def sandbox():
    box = DecodeSandbox(timeout_s=20)
    yield box
    box.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_mutated_images_decode_or_raise_image_error(sandbox, fmt):
    seen = fuzz(fmt, 40, sandbox)
    assert sum(seen.values()) >= 40


@pytest.mark.parametrize("fn, timeout_s, expected", [(hang_forever, 5, "HANG"), (die, 60, "CRASH")])
def test_the_fuzz_oracle_catches_hangs_and_crashes(fn, timeout_s, expected):
    """The sandbox reports a decoder that hangs or kills its process, then works again."""
    box = DecodeSandbox(timeout_s=timeout_s, fn=fn)
    try:
        assert box.outcome(b"anything").startswith(expected)
        box.fn = DecodeSandbox(timeout_s=3).fn
        assert box.outcome(b"not an image") == "ImageError:not_an_image"
    finally:
        box.close()


def test_schemathesis_finds_no_server_error(hardened_server, tmp_path):
    """Every route of the OpenAPI schema, with generated valid and invalid requests: no 5xx."""
    st = Path(sys.executable).with_name("st")
    cmd = [
        str(st),
        "run",
        hardened_server.url + "/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "25",
        "--seed",
        "1",
        "--header",
        f"Authorization: Bearer {HARDENED_TOKEN}",
        # A client deadline too short to meet is answered 504 by design (the deadline tests
        # cover the header); fixed here so the check below means "no server fault".
        "--header",
        "X-Request-Timeout-Ms: 60000",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "not_a_server_error" in proc.stdout or "passed" in proc.stdout.lower()
