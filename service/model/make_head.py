"""Build a small Keras classification head for the feature-extractor pipeline example.

    python -m service.model.make_head --out examples/head.keras --classes 5

The head takes the ``pooling="avg"`` features of a ResNet (2048 floats for every ResNet here)
and ends in a softmax over ``--classes``. Its weights are random (seeded): the point is a real
``.keras`` file that deploys like a fine-tuned head; train it with ``model.fit`` on your
features for real predictions. ``--labels`` also writes one label per line.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def build_head(features: int = 2048, classes: int = 5, hidden: int = 256, seed: int = 0):
    """Dense(hidden, relu) -> Dropout -> Dense(classes, softmax) on ``features`` floats."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((features,), name="features")
    x = inputs
    if hidden:
        x = keras.layers.Dense(hidden, activation="relu", name="hidden")(x)
        x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="head")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the .keras file to write")
    parser.add_argument("--features", type=int, default=2048, help="input width (ResNet: 2048)")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256, help="hidden units (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labels", default="", help="also write this labels file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.out.endswith(".keras"):
        parser.error("--out must end in .keras")
    if args.classes < 2 or args.features < 1 or args.hidden < 0:
        parser.error("--classes >= 2, --features >= 1, --hidden >= 0")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    build_head(args.features, args.classes, args.hidden, args.seed).save(out)
    log.info("wrote %s (%d features -> %d classes)", out, args.features, args.classes)
    if args.labels:
        Path(args.labels).write_text("".join(f"class_{i}\n" for i in range(args.classes)))
        log.info("wrote %s", args.labels)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
