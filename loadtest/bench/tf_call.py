"""TensorFlow's model call alone: the concrete function's public call against the flat call
the runner makes (``service/model/backends/tensorflow.py``), CPU per call, run by hand.

    python -m loadtest.bench.tf_call [--calls 3000] [--repeats 3] [--batch 1]

The stand-in model of ``make bench-serving`` (XLA on), one input buffer as the runner
assembles it; both calls alternate, ``--repeats`` times each, and must give the same outputs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from loadtest.bench.serving import CACHE, standin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()

    from service.model.backends import make_runner
    from service.model.loader import load_keras_file

    runner = make_runner(
        load_keras_file(str(standin(CACHE / "standin.keras"))), [args.batch], xla=True
    )
    runner.warmup()
    images = np.zeros((args.batch, *runner.input_shape), runner.input_dtype)
    batch = runner.assemble(images).batch
    calls = {
        "public": lambda: runner._concrete(batch).numpy(),  # noqa: SLF001 - what is compared
        "flat": lambda: runner._flat(batch).numpy(),  # noqa: SLF001
    }
    np.testing.assert_array_equal(calls["public"](), calls["flat"]())
    for _ in range(args.repeats):
        for name, call in calls.items():
            start = time.process_time()
            for _ in range(args.calls):
                call()
            per_call = (time.process_time() - start) / args.calls
            print(f"{name:6s} {1e6 * per_call:7.1f} us of CPU per call", flush=True)


if __name__ == "__main__":
    main()
