"""What traces cost per request, in CPU seconds of the serving process (docs/BENCHMARKS.md,
"Traces"): the app in this process (tiny model, raw-image ``POST /v1/classify`` through the
whole ASGI stack), rounds with traces off and on interleaved, the OTLP spans exported over
HTTP to a receiver in another process (its CPU not counted, as a collector's would not be).

    python -m loadtest.bench.tracing_cost [--requests 400] [--rounds 3]

CPU time, not wall time: on a shared machine the CPU seconds a request costs move much less
than its latency.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

RECEIVER = """
import sys, time
from tests.support.otlp import start_receiver
r, s = start_receiver()
print(r.port, flush=True)
sys.stdin.read()
print(len(r.spans), flush=True)
"""


def _round(client, image: bytes, requests: int) -> None:
    for _ in range(requests):
        r = client.post("/v1/classify", content=image, headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert receiver.stdout is not None and receiver.stdin is not None
    port = receiver.stdout.readline().strip()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"

    from fastapi.testclient import TestClient

    from service import tracing
    from service.app import create_app
    from service.settings import Settings
    from tests.support.helpers import encode, photo_like
    from tests.support.tiny import tiny_loaded

    image = encode(photo_like(), "JPEG", quality=90)
    settings = Settings(preprocess_workers=1, max_batch_size=8, batch_buckets=[1, 2, 4, 8])
    with TestClient(create_app(settings, model_factory=tiny_loaded)) as client:
        while client.get("/readyz").status_code != 200:
            time.sleep(0.1)
        _round(client, image, 20)  # warm, traced: the SDK and exporter imported
        tracing.shutdown()  # create_app turned them on (the endpoint is set): off first
        _round(client, image, 20)
        figures: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                cpu = time.process_time()
                if mode == "on":
                    tracing.configure({"OTEL_TRACES_EXPORTER": "otlp"})
                _round(client, image, args.requests)
                if mode == "on":
                    tracing.shutdown()  # exports what is left: counted too
                seconds = (time.process_time() - cpu) / args.requests
                figures[mode].append(seconds)
                print(f"{mode:3} {1e6 * seconds:8.0f} µs CPU per request", flush=True)
    receiver.stdin.close()
    spans = receiver.stdout.readline().strip()
    receiver.wait(10)
    off, on = statistics.median(figures["off"]), statistics.median(figures["on"])
    print(
        f"median: off {1e6 * off:.0f} µs, on {1e6 * on:.0f} µs CPU per request "
        f"(+{1e6 * (on - off):.0f} µs, +{100 * (on - off) / off:.1f}%); spans received: {spans}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
