"""`helm test` pod of the resnet-serve chart: wait for /readyz, then classify a test image.

The test image is built in here (a 64x64 PNG, standard library only), so the pod needs
nothing but Python. It fails when the service never becomes ready, serves random
weights (unless --allow-random-weights), or answers the classification badly.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
import urllib.error
import urllib.request
import zlib


def test_png(size: int = 64) -> bytes:
    """A deterministic RGB gradient as a PNG file."""
    rows = b"".join(
        b"\x00" + bytes(v for x in range(size) for v in (x * 4 % 256, y * 4 % 256, 128))
        for y in range(size)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def token() -> str:
    """The bearer token to send: SERVE_TEST_TOKEN, else the first of SERVE_AUTH_TOKENS (the
    chart passes whichever the server is configured with); empty without authentication."""
    explicit = os.environ.get("SERVE_TEST_TOKEN", "").strip()
    if explicit:
        return explicit
    tokens = [t.strip() for t in os.environ.get("SERVE_AUTH_TOKENS", "").split(",")]
    return next((t for t in tokens if t), "")


def request(url: str, data: bytes | None = None, content_type: str = "", timeout: float = 30.0):
    """(status, parsed JSON body or None)."""
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if content_type:
        req.add_header("Content-Type", content_type)
    if bearer := token():
        req.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def wait_ready(base: str, timeout_s: float, interval_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, body = request(base + "/readyz", timeout=5)
            if status == 200:
                print(f"ready: {body}", flush=True)
                return
            last = f"{status} {body}"
        except OSError as exc:
            last = str(exc)
        time.sleep(interval_s)
    raise SystemExit(f"FAIL: {base}/readyz not ready after {timeout_s:.0f} s (last: {last})")


def check(base: str, top_k: int, allow_random: bool) -> None:
    status, models = request(base + "/v1/models")
    if status != 200 or not isinstance(models, dict) or not models.get("models"):
        raise SystemExit(f"FAIL: GET /v1/models -> {status} {models}")
    for model in models["models"]:
        if model.get("random_weights") and not allow_random:
            raise SystemExit(f"FAIL: {model.get('name')} serves random weights")
    status, body = request(f"{base}/v1/classify?top_k={top_k}", test_png(), "image/png", 120)
    if status != 200 or not isinstance(body, dict):
        raise SystemExit(f"FAIL: POST /v1/classify -> {status} {body}")
    predictions = body.get("predictions")
    if not (isinstance(predictions, list) and len(predictions) == 1 and len(predictions[0]) == top_k):
        raise SystemExit(f"FAIL: expected 1 image x {top_k} classes, got {predictions}")
    scores = [p["score"] for p in predictions[0]]
    if any(not 0.0 <= s <= 1.0 for s in scores) or scores != sorted(scores, reverse=True):
        raise SystemExit(f"FAIL: scores not probabilities in descending order: {scores}")
    if any(not isinstance(p.get("label"), str) or not p["label"] for p in predictions[0]):
        raise SystemExit(f"FAIL: a prediction has no label: {predictions[0]}")
    best = predictions[0][0]
    print(f"PASS: classified the test image as {best['label']!r} ({best['score']:.3f})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="base URL of the service")
    parser.add_argument("--ready-timeout", type=float, default=600)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--allow-random-weights", action="store_true")
    args = parser.parse_args(argv)
    base = args.url.rstrip("/")
    wait_ready(base, args.ready_timeout)
    check(base, args.top_k, args.allow_random_weights)
    return 0


if __name__ == "__main__":
    sys.exit(main())
