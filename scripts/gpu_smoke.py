"""`make gpu-smoke`: on a machine with an NVIDIA GPU, check that TensorFlow sees it, and
measure the compiled ResNet's ceiling (images/s of the model alone, no HTTP, no decoding)
in FP32 and in mixed precision, to compare a node with published figures before deploying.

Random weights (nothing is downloaded); synthetic uint8-range input already on the device.
Prints one JSON object; exits 2 when no GPU is visible (unless --allow-cpu).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def measure(arch: str, batch: int, iters: int, warmup: int, mixed: bool, xla: bool) -> dict:
    import keras
    import tensorflow as tf

    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    try:
        builder = {
            "resnet50": keras.applications.ResNet50,
            "resnet101": keras.applications.ResNet101,
            "resnet152": keras.applications.ResNet152,
        }[arch]
        model = builder(weights=None)
        infer = tf.function(lambda x: model(x, training=False), jit_compile=xla)
        images = tf.random.uniform((batch, 224, 224, 3), 0, 255)
        for _ in range(warmup):
            infer(images).numpy()
        started = time.perf_counter()
        for _ in range(iters):
            out = infer(images)
        out.numpy()  # wait for the device
        elapsed = time.perf_counter() - started
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return {
        "precision": "mixed_float16" if mixed else "float32",
        "batch": batch,
        "iterations": iters,
        "images_per_s": round(batch * iters / elapsed, 1),
        "ms_per_batch": round(1000 * elapsed / iters, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--arch", default="resnet50", choices=["resnet50", "resnet101", "resnet152"]
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-xla", action="store_true", help="plain tf.function, no XLA")
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (a dry run)")
    args = parser.parse_args(argv)

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    report: dict = {
        "tensorflow": tf.__version__,
        "build": {
            k: v
            for k, v in tf.sysconfig.get_build_info().items()
            if k in ("cuda_version", "cudnn_version")
        },
        "gpus": [
            tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus
        ],
        "arch": args.arch,
        "xla": not args.no_xla,
    }
    if not gpus and not args.allow_cpu:
        report["error"] = "TensorFlow sees no GPU (driver, device plugin or CUDA libraries missing)"
        print(json.dumps(report, indent=2))  # noqa: T201
        return 2
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    report["results"] = [
        measure(args.arch, args.batch, args.iters, args.warmup, mixed, not args.no_xla)
        for mixed in (False, True)
    ]
    fp32, mixed = (r["images_per_s"] for r in report["results"])
    report["mixed_over_fp32"] = round(mixed / fp32, 2) if fp32 else None
    print(json.dumps(report, indent=2))  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
