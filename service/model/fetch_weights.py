"""Download the ImageNet weights into the Keras cache, where the network exists (image builds).

    python -m service.model.fetch_weights --model resnet50 [--notop]

The service itself never downloads: at run time ``SERVE_WEIGHTS=imagenet`` reads this cache.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .architectures import ARCHITECTURES, WEIGHTS_URL

log = logging.getLogger("fetch_weights")


def fetch(model: str, include_top: bool = True) -> str:
    import keras

    arch = ARCHITECTURES[model]
    name = arch.weights_file(include_top)
    # keras.utils.get_file checks the published hash when Keras knows it (ResNet family).
    from keras.src.applications import resnet

    hashes = resnet.WEIGHTS_HASHES.get(model)
    file_hash = hashes[0 if include_top else 1] if hashes else None
    return keras.utils.get_file(
        name, WEIGHTS_URL + name, cache_subdir="models", file_hash=file_hash
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=sorted(ARCHITECTURES))
    parser.add_argument(
        "--notop", action="store_true", help="also fetch the feature-extractor file"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for model in args.model or ["resnet50"]:
        log.info("%s -> %s", model, fetch(model, include_top=True))
        if args.notop:
            log.info("%s (notop) -> %s", model, fetch(model, include_top=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
