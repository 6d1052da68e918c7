"""Build a Keras ResNet and load its weights, never downloading anything at run time."""

from __future__ import annotations

import logging
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import WeightsUnavailable
from .architectures import ARCHITECTURES, Architecture
from .normalize import NormalizeMode

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A built Keras model and what the service needs to know about it.

    Args:
        model: the Keras model; its output is logits unless ``outputs_probabilities``.
        arch: the architecture name (``resnet50`` ...) or ``custom`` for a ``.keras`` file.
        normalize: the preprocessing mode its ``preprocess_input`` uses.
        weights_source: where the weights came from (``imagenet:<path>``, a path, ``random``).
        random_weights: True when the weights are random: predictions are meaningless.
        outputs_probabilities: the model ends in a softmax already.
    """

    model: Any
    arch: str
    normalize: NormalizeMode
    input_size: tuple[int, int]
    num_classes: int
    weights_source: str
    random_weights: bool
    outputs_probabilities: bool = False
    warnings: list[str] = field(default_factory=list)


def check_weights(arch_name: str, weights: str) -> None:
    """Strict mode, before anything is built: the weights must be there.

    Raises:
        WeightsUnavailable: ``random``, ImageNet weights missing from the Keras cache, or a
            weights file that does not exist.
    """
    if weights == "random":
        raise WeightsUnavailable("SERVE_WEIGHTS=random is not allowed with SERVE_STRICT=true")
    if weights == "imagenet":
        arch = ARCHITECTURES[arch_name]
        if find_cached_imagenet_weights(arch) is None:
            raise WeightsUnavailable(
                f"ImageNet weights for {arch_name} are not in the Keras cache and "
                "SERVE_STRICT=true: refusing to start (nothing is downloaded at run time)"
            )
        return
    if not os.path.isfile(weights):
        raise WeightsUnavailable(f"weights file {weights!r} does not exist (SERVE_STRICT=true)")
    check_weights_file(weights)


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_weights_file(path: str, where: str = "SERVE_WEIGHTS") -> None:
    """A model or weights file that exists must be one Keras can load, whole: a ``.keras``
    zip archive with its central directory (written last), or an HDF5 file as long as its
    superblock says. Read without Keras, in a moment, so that an empty, truncated or foreign
    file stops the pod at start rather than fail the model's load in the accelerator process.

    Raises:
        WeightsUnavailable: what is wrong, after ``where`` (the setting that names the file).
    """

    def refuse(why: str) -> WeightsUnavailable:
        return WeightsUnavailable(f"{where} {path!r}: {why}")

    try:
        size = os.path.getsize(path)
        if size == 0:
            raise refuse("the file is empty")
        if path.endswith(".keras"):
            if not zipfile.is_zipfile(path):
                raise refuse("not a .keras file (a zip archive): truncated, or another format")
            return
        if path.endswith(".weights.json"):  # the index of sharded weights
            return
        if not path.endswith((".h5", ".hdf5")):
            raise refuse(
                "Keras loads a .keras model, or weights from .weights.h5, .h5, .hdf5 or "
                ".weights.json"
            )
        with open(path, "rb") as f:
            end = _hdf5_end(f.read(4096))
    except OSError as exc:
        raise refuse(str(exc.strerror)) from None
    if end is None:
        raise refuse("not an HDF5 file: another format, or its first bytes are missing")
    if size < end:
        raise refuse(f"truncated: {size} bytes of the {end} its HDF5 superblock gives")


def _hdf5_end(head: bytes) -> int | None:
    """The length an HDF5 file gives itself (its superblock's base + end-of-file addresses),
    or None without a superblock at the start (a user block puts it at 512, 1024 ...)."""
    for base in (0, 512, 1024, 2048):
        block = head[base : base + 96]
        if not block.startswith(HDF5_SIGNATURE) or len(block) < 12:
            continue
        version = block[8]
        if version in (0, 1):
            offsets, first = block[13], 24 + 4 * version  # v1: 4 more bytes before them
        elif version in (2, 3):
            offsets, first = block[9], 12
        else:
            return base  # a superblock this check does not know: its length is not read
        if offsets not in (2, 4, 8) or len(block) < first + 3 * offsets:
            return None
        kind = {2: "<H", 4: "<I", 8: "<Q"}[offsets]
        start = struct.unpack_from(kind, block, first)[0]
        eof = struct.unpack_from(kind, block, first + 2 * offsets)[0]
        return start + eof
    return None


def keras_cache_dirs() -> list[Path]:
    """Where Keras keeps downloaded weights: ``$KERAS_HOME/models`` (default ``~/.keras``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return [Path(home) / "models", Path("/tmp/.keras/models")]


def find_cached_imagenet_weights(arch: Architecture, include_top: bool = True) -> Path | None:
    for folder in keras_cache_dirs():
        candidate = folder / arch.weights_file(include_top)
        if candidate.is_file() and candidate.stat().st_size > 0:
            return candidate
    return None


def build_architecture(
    arch_name: str, *, include_top: bool = True, pooling: str | None = None, weights: Any = None
) -> Any:
    """A Keras ResNet with logits output (softmax is applied in postprocessing)."""
    import keras

    arch = ARCHITECTURES[arch_name]
    constructor = getattr(keras.applications, arch.constructor)
    kwargs: dict[str, Any] = {"weights": weights, "include_top": include_top}
    if include_top:
        kwargs["classifier_activation"] = None
    else:
        kwargs["pooling"] = pooling
        kwargs["input_shape"] = (*arch.input_size, 3)
    return constructor(**kwargs)


def load_model(
    arch_name: str,
    weights: str,
    *,
    strict: bool = False,
    include_top: bool = True,
    pooling: str | None = None,
) -> LoadedModel:
    """Build ``arch_name`` with ``weights`` = ``imagenet`` | ``random`` | a file path.

    ``imagenet`` reads the Keras cache only. When it is missing: in strict mode raise
    :class:`WeightsUnavailable`; otherwise fall back to random weights and say so loudly.
    A ``.keras`` file is a whole model and replaces the architecture.
    ``include_top=False`` with ``pooling="avg"`` gives the feature extractor (outputs are
    feature vectors, and ``imagenet`` reads the ``_notop`` weights file).
    """
    arch = ARCHITECTURES[arch_name]
    notes: list[str] = []

    def build() -> Any:
        return build_architecture(arch_name, include_top=include_top, pooling=pooling)

    if weights == "imagenet":
        path = find_cached_imagenet_weights(arch, include_top)
        if path is None:
            where = ", ".join(str(d) for d in keras_cache_dirs())
            fetch = f"python -m service.model.fetch_weights --model {arch_name}"
            if not include_top:
                fetch += " --notop"  # the feature extractor's file, fetched only on request
            message = (
                f"ImageNet weights for {arch_name} ({arch.weights_file(include_top)}) are not in "
                f"the Keras cache ({where}); this service never downloads at run time. Run "
                f"`{fetch}` where the network is reachable, or bake them into the image."
            )
            if strict:
                raise WeightsUnavailable(message + " SERVE_STRICT=true: refusing to start.")
            notes.append(message + " Serving RANDOM weights: predictions are meaningless.")
            return _random(arch, notes, build)
        model = build()
        model.load_weights(str(path))
        return _loaded(
            model, arch.name, arch.normalize, f"imagenet:{path}", random=False, notes=notes
        )
    if weights == "random":
        if strict:
            check_weights(arch_name, weights)
        notes.append(
            "SERVE_WEIGHTS=random: serving RANDOM weights, predictions are meaningless "
            "(tests and benchmarks)."
        )
        return _random(arch, notes, build)
    path = Path(weights)
    if not path.is_file():
        message = f"weights file {weights!r} does not exist"
        if strict:
            raise WeightsUnavailable(message + "; SERVE_STRICT=true: refusing to start.")
        notes.append(message + ". Serving RANDOM weights: predictions are meaningless.")
        return _random(arch, notes, build)
    if path.suffix == ".keras":
        # A whole model: its own input size; it expects the preprocessing of SERVE_MODEL's family.
        return load_keras_file(str(path), arch.normalize, arch=arch.name)
    model = build()
    model.load_weights(str(path))
    return _loaded(model, arch.name, arch.normalize, str(path), random=False, notes=notes)


def load_keras_file(path: str, normalize: NormalizeMode = "none", *, arch: str = "keras-file"):
    """A whole Keras model from a ``.keras`` file (a classification head, a fine-tuned model);
    its input size is the model's own."""
    import keras

    model = keras.saving.load_model(path, compile=False)
    return _loaded(model, arch, normalize, path, random=False, notes=[])


def _random(arch: Architecture, notes: list[str], build: Any) -> LoadedModel:
    for note in notes:
        log.warning("!!! %s", note)
    return _loaded(build(), arch.name, arch.normalize, "random", random=True, notes=notes)


def _loaded(
    model: Any,
    arch: str,
    normalize: NormalizeMode,
    source: str,
    *,
    random: bool,
    notes: list[str],
) -> LoadedModel:
    """What the service needs to know of a built model, read from the model itself."""
    shape = model.input_shape
    size = (int(shape[1]), int(shape[2])) if len(shape) == 4 else (0, 0)
    last = model.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    return LoadedModel(
        model=model,
        arch=arch,
        normalize=normalize,
        input_size=size,
        num_classes=int(model.output_shape[-1]),
        weights_source=source,
        random_weights=random,
        outputs_probabilities=activation == "softmax",
        warnings=notes,
    )
