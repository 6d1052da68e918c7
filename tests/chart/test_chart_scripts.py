"""The chart's scripts (files/): the weights init container and the helm test pod, run for
real against HTTP servers on loopback."""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import sys
import threading
from contextlib import contextmanager

import pytest

from tests.chart.chart_helpers import CHART
from tests.support.helpers import JsonHandler

FETCH = CHART / "files" / "fetch_weights_url.py"
HELM_TEST = CHART / "files" / "helm_test.py"


@contextmanager
def serve(handler_cls):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run(script, *args, timeout=60):
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout
    )


PAYLOAD = b"\x89HDF\r\n" + bytes(range(256)) * 64


class WeightsHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path == "/w.h5":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


def test_fetch_writes_the_file_and_checks_its_hash(tmp_path):
    dest = tmp_path / "models" / "w.h5"
    with serve(WeightsHandler) as base:
        out = run(
            FETCH,
            "--url",
            f"{base}/w.h5",
            "--dest",
            str(dest),
            "--sha256",
            hashlib.sha256(PAYLOAD).hexdigest().upper(),
        )
    assert out.returncode == 0, out.stderr
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "models" / "w.h5.part").exists()


def test_fetch_refuses_a_hash_mismatch_and_leaves_nothing(tmp_path):
    dest = tmp_path / "w.h5"
    with serve(WeightsHandler) as base:
        out = run(FETCH, "--url", f"{base}/w.h5", "--dest", str(dest), "--sha256", "0" * 64)
    assert out.returncode != 0 and "sha256 mismatch" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_fetch_fails_after_its_retries_on_404(tmp_path):
    with serve(WeightsHandler) as base:
        out = run(
            FETCH, "--url", f"{base}/missing", "--dest", str(tmp_path / "w"), "--attempts", "1"
        )
    assert out.returncode != 0 and "404" in out.stderr


def fake_service(ready_after: int, predictions, random_weights=False):
    """A stand-in that answers like service/api (503 on /readyz for the first calls)."""
    calls = {"readyz": 0, "classify": []}

    class Handler(JsonHandler):
        def do_GET(self):  # noqa: N802
            if self.path == "/readyz":
                calls["readyz"] += 1
                if calls["readyz"] > ready_after:
                    return self.reply(200, {"status": "ready"})
                return self.reply(503, {"error": {"code": "not_ready", "message": "loading"}})
            if self.path == "/v1/models":
                return self.reply(
                    200, {"models": [{"name": "resnet50", "random_weights": random_weights}]}
                )
            self.reply(404, {})

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            calls["classify"].append((self.path, self.headers["Content-Type"], body))
            self.reply(200, {"model": "resnet50", "predictions": predictions})

    return Handler, calls


GOOD = [
    [
        {"label": "tabby", "class_id": 281, "score": 0.5},
        {"label": "tiger cat", "class_id": 282, "score": 0.2},
        {"label": "lynx", "class_id": 287, "score": 0.1},
    ]
]


def test_helm_test_waits_for_readiness_then_classifies_a_png():
    handler, calls = fake_service(ready_after=2, predictions=GOOD)
    with serve(handler) as base:
        out = run(HELM_TEST, "--url", base, "--ready-timeout", "30")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS: classified the test image as 'tabby'" in out.stdout
    assert calls["readyz"] == 3
    ((path, ctype, body),) = calls["classify"]
    assert path == "/v1/classify?top_k=3" and ctype == "image/png"
    assert body.startswith(b"\x89PNG\r\n\x1a\n")


def test_helm_test_png_decodes_to_the_expected_image():
    import importlib.util  # noqa: E401
    import io

    from PIL import Image

    spec = importlib.util.spec_from_file_location("helm_test", HELM_TEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    image = Image.open(io.BytesIO(module.test_png()))
    assert image.size == (64, 64) and image.mode == "RGB"
    assert image.getpixel((10, 20)) == (40, 80, 128)


@pytest.mark.parametrize(
    "predictions, random_weights, message",
    [
        (GOOD, True, "serves random weights"),
        ([GOOD[0][:2]], False, "expected 1 image x 3 classes"),
        ([list(reversed(GOOD[0]))], False, "descending order"),
        ([[dict(p, label="") for p in GOOD[0]]], False, "no label"),
    ],
    ids=["random-weights", "too-few-classes", "unsorted", "no-label"],
)
def test_helm_test_fails_on_a_bad_service(predictions, random_weights, message):
    handler, _ = fake_service(ready_after=0, predictions=predictions, random_weights=random_weights)
    with serve(handler) as base:
        out = run(HELM_TEST, "--url", base, "--ready-timeout", "10")
    assert out.returncode != 0 and message in out.stderr + out.stdout


def test_helm_test_gives_up_when_never_ready():
    handler, _ = fake_service(ready_after=10**6, predictions=GOOD)
    with serve(handler) as base:
        out = run(HELM_TEST, "--url", base, "--ready-timeout", "3")
    assert out.returncode != 0 and "not ready after 3 s" in out.stderr
