"""A model stage on one Keras backend, in a process of its own (Keras chooses its backend when it
is first imported, so each backend under test gets a fresh interpreter).

    python -m tests.support.backend_probe BACKEND OUT.npz --pixels P.npy --buckets 1,2,4
        (--keras-file M.keras --normalize caffe | --arch resnet50 --weights W.weights.h5)

Builds the runner the service would build, warms it, records its compilations, runs the
pixels through it in batches of every bucket size (padded like the batcher does), records the
compilations again, and writes the outputs (as probabilities), both counts and the device.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("backend")
    parser.add_argument("out")
    parser.add_argument("--pixels", required=True)
    parser.add_argument("--buckets", default="1,2,4")
    parser.add_argument("--keras-file")
    parser.add_argument("--normalize", default="caffe")
    parser.add_argument("--arch")
    parser.add_argument("--weights")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from service.model.backends import configure, select
    from service.settings import Settings

    select(args.backend)
    configure(Settings(backend=args.backend, model_instances=1))
    from service.dataplane.postprocess import probabilities
    from service.model.backends import make_runner
    from service.model.loader import load_keras_file, load_model

    if args.keras_file:
        loaded = load_keras_file(args.keras_file, args.normalize)
    else:
        loaded = load_model(args.arch, args.weights)
    buckets = [int(b) for b in args.buckets.split(",")]
    runner = make_runner(loaded, buckets)
    runner.warmup()
    warmed = runner.compilations
    pixels = np.load(args.pixels)
    outputs = []
    for start in range(0, len(pixels), 3):  # batches of 3: padded up to the next bucket
        out, _, _, _ = runner.run(pixels[start : start + 3])
        outputs.append(out)
    for size in buckets:  # every bucket again, full
        runner.run(np.repeat(pixels[:1], size, axis=0))
    # Each image alone as in a front end's slot (aligned: read in place, no copy).
    from service.model.runner import aligned_zeros

    slots = aligned_zeros(pixels.shape, pixels.dtype)
    slots[...] = pixels
    alone = np.concatenate([runner.run([slot])[0] for slot in slots])
    probs = probabilities(np.concatenate(outputs), loaded.outputs_probabilities)
    # What an assembled batch hands the compiled call: a host array, or the device's own type.
    handed = type(runner.assemble(pixels[:2]).batch)
    np.savez(
        args.out,
        probabilities=probs,
        alone=probabilities(alone, loaded.outputs_probabilities),
        warmed=warmed,
        served=runner.compilations,
        device=runner.device,
        backend=runner.backend,
        handed=f"{handed.__module__}.{handed.__qualname__}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
