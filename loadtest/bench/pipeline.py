"""Benchmark: a pipelined multi-stage service reaches its slowest stage's throughput.

    python -m loadtest.bench.pipeline [--images 480] [--batch 8] [--costs-ms 40,20]

The stages are the service's own: decode/resize in the front end's ``Decoder`` threads (real
JPEGs), then one ``DynamicBatcher`` per model stage chained by a ``Chain``, exactly as a
``Pipeline`` runs them. Only the model runners are replaced, by :class:`StandInAccelerator`: a
BENCHMARK TOOL, never used by the service, that costs a fixed time per batch and releases the
GIL while it "computes" (``time.sleep``), as a GPU kernel launch does. With the stand-ins the
numbers are exact and machine-independent, so the comparison isolates the pipelining:

* each stage alone, saturated: its throughput; the slowest one bounds the service;
* pipelined: every image goes through every stage, all stages busy at once;
* one after another: each batch is decoded, then run by stage 1, then stage 2, before the next
  batch starts, which gives ``batch / (sum of the stage times)``.

It prints a table and, with ``--json``, writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from service.engine.batcher import DynamicBatcher
from service.engine.chain import Chain
from service.engine.stages import ModelStage
from service.metrics import Metrics
from service.preprocess.decode import PreprocessConfig
from service.preprocess.decoder import Decoder

CFG = PreprocessConfig(size=(224, 224))


class StandInAccelerator:
    """BENCHMARK TOOL ONLY: a model runner that costs ``cost_s`` per batch, GIL released.

    Outputs ``features`` float32 zeros per item, so stages chain like a backbone and a head.
    """

    def __init__(self, cost_s: float, features: int = 16):
        self.cost_s = cost_s
        self.features = features

    def __call__(self, items: list[np.ndarray]) -> tuple[np.ndarray, int, float]:
        time.sleep(self.cost_s)  # releases the GIL, like waiting on a device
        return np.zeros((len(items), self.features), np.float32), len(items), self.cost_s


def make_jpegs(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(min(n, 16)):  # 16 distinct images, reused
        y, x = np.mgrid[0:240, 0:320].astype(np.float32)
        img = 128 + 100 * np.sin(x / (11 + i)) + rng.normal(0, 10, (240, 320))
        rgb = np.clip(np.stack([img, img[::-1], img[:, ::-1]], -1), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return [out[i % len(out)] for i in range(n)]


@dataclass
class Bench:
    decoder: Decoder
    stages: list[ModelStage]
    batch: int

    @property
    def chain(self) -> Chain:
        return Chain(self.stages)


async def build(workers: int, costs_s: list[float], batch: int) -> Bench:
    metrics = Metrics()
    decoder = Decoder(workers)
    stages = []
    for i, cost in enumerate(costs_s):
        stage = ModelStage(f"stand-in-{i}", loaded=None)  # type: ignore[arg-type]
        stage.batcher = DynamicBatcher(
            stage.name,
            StandInAccelerator(cost),
            max_batch_size=batch,
            max_queue=100_000,
            metrics=metrics,
        )
        stage.batcher.start()
        stages.append(stage)
    return Bench(decoder, stages, batch)


async def decode_alone(b: Bench, images: list[bytes]) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(b.decoder.decode(d, CFG) for d in images))
    return len(images) / (time.perf_counter() - start)


async def stage_alone(stage: ModelStage, n: int, deadline: float) -> float:
    item = np.zeros(16, np.float32)
    start = time.perf_counter()
    await asyncio.gather(*(stage.run(item, deadline) for _ in range(n)))
    return n / (time.perf_counter() - start)


async def pipelined(b: Bench, images: list[bytes], deadline: float) -> float:
    chain = b.chain

    async def one(data: bytes) -> None:
        pre = await b.decoder.decode(data, CFG)
        await chain.run(pre.pixels, deadline)

    start = time.perf_counter()
    await asyncio.gather(*(one(d) for d in images))
    return len(images) / (time.perf_counter() - start)


async def one_after_another(b: Bench, images: list[bytes], deadline: float) -> float:
    start = time.perf_counter()
    for i in range(0, len(images), b.batch):
        chunk = images[i : i + b.batch]
        decoded = await asyncio.gather(*(b.decoder.decode(d, CFG) for d in chunk))
        items = [p.pixels for p in decoded]
        for stage in b.stages:  # the whole batch through one stage, then the next
            rows = await asyncio.gather(*(stage.run(x, deadline) for x in items))
            items = [row for row, _ in rows]
    return len(images) / (time.perf_counter() - start)


async def main_async(args: argparse.Namespace) -> dict:
    costs = [float(c) / 1000 for c in args.costs_ms.split(",")]
    b = await build(args.workers, costs, args.batch)
    images = make_jpegs(args.images)
    deadline = time.monotonic() + 3600
    try:
        await decode_alone(b, images[: args.batch * 4])  # warm the workers
        alone = {"decode": await decode_alone(b, images)}
        for stage in b.stages:
            alone[stage.name] = await stage_alone(stage, args.images, deadline)
        slowest = min(alone, key=alone.__getitem__)
        piped = await pipelined(b, images, deadline)
        serial = await one_after_another(b, images, deadline)
    finally:
        for stage in b.stages:
            await stage.stop()
        b.decoder.close()
    decode_batch_s = args.batch / alone["decode"]
    predicted_serial = args.batch / (decode_batch_s + sum(costs))
    return {
        "images": args.images,
        "batch": args.batch,
        "workers": args.workers,
        "stand_in_costs_ms_per_batch": [c * 1000 for c in costs],
        "alone_images_per_s": {k: round(v, 1) for k, v in alone.items()},
        "slowest_stage": slowest,
        "slowest_images_per_s": round(alone[slowest], 1),
        "pipelined_images_per_s": round(piped, 1),
        "pipelined_vs_slowest": round(piped / alone[slowest], 3),
        "one_after_another_images_per_s": round(serial, 1),
        "batch_over_sum_of_stage_times": round(predicted_serial, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--batch", type=int, default=8, help="max batch size of every stage")
    parser.add_argument("--workers", type=int, default=2, help="decode threads")
    parser.add_argument(
        "--costs-ms", default="40,20", help="stand-in cost per batch of each model stage, ms"
    )
    parser.add_argument("--json", default="", help="also write the figures here")
    args = parser.parse_args(argv)
    out = asyncio.run(main_async(args))
    print(
        f"{'stage alone (images/s)':<34}"
        + "  ".join(f"{k}={v}" for k, v in out["alone_images_per_s"].items())
    )
    print(f"{'slowest stage':<34}{out['slowest_stage']} {out['slowest_images_per_s']}/s")
    print(
        f"{'pipelined':<34}{out['pipelined_images_per_s']}/s "
        f"= {100 * out['pipelined_vs_slowest']:.1f}% of the slowest stage"
    )
    print(
        f"{'one after another':<34}{out['one_after_another_images_per_s']}/s "
        f"(batch / sum of stage times = {out['batch_over_sum_of_stage_times']}/s)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0 if out["pipelined_vs_slowest"] >= 0.9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
