"""Named pipelines declared in a YAML file (``SERVE_PIPELINES_FILE``).

A pipeline is a list of stages, run in order on every image::

    pipelines:
      resnet50-head:
        labels: head-labels.txt          # optional; default class_<i> (ImageNet for 1000)
        stages:
          - kind: decode                 # CPU: decode + resize, in the front end
          - kind: model                  # a Keras ResNet, here as a feature extractor
            name: backbone
            arch: resnet50
            weights: imagenet            # imagenet | random | a weights file
            include_top: false
            pooling: avg
          - kind: model                  # a whole Keras model from a .keras file
            name: head
            file: head.keras             # relative paths are relative to the YAML file
          - kind: topk                   # softmax (unless the model ends in one) + top-k

A ``cpu`` stage may follow any model stage (between two models, or before ``topk``)::

          - kind: cpu                    # runs in the pipeline's worker processes
            name: unit
            function: service.pipeline.cpu_functions:l2_normalize

Its function takes one item's output row of the previous stage (a NumPy array) and returns one
NumPy array (sent on as ``float32``). Its module is imported in the spawned worker processes,
so it must not import TensorFlow.

The pipeline named ``default`` is always decode -> ``SERVE_MODEL`` with ``SERVE_WEIGHTS`` ->
top-k (a file may not redefine it). This module only parses and validates;
it imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from ..model.architectures import ARCHITECTURES

DEFAULT = "default"
CPU_KINDS = ("decode", "cpu")
STAGE_KINDS = (*CPU_KINDS, "model", "topk")
NAME = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,62}[a-z0-9])?$")
FUNCTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
CPU_KEYS = {"kind", "name", "function"}
MODEL_KEYS = {"kind", "name", "arch", "weights", "include_top", "pooling", "file", "normalize"}


class PipelineConfigError(ValueError):
    """The pipelines file is not valid; the message says where and what is allowed."""


@dataclass(frozen=True)
class ModelStageSpec:
    """One model stage: a Keras ResNet (``arch``) or a whole model from a ``.keras`` file."""

    name: str
    arch: str | None = None
    weights: str = "imagenet"
    include_top: bool = True
    pooling: str | None = None
    file: str | None = None
    normalize: Literal["caffe", "tf", "none"] | None = None


@dataclass(frozen=True)
class CpuStageSpec:
    """A CPU stage between model stages: ``function`` (``package.module:function``) applied to
    each item in the pipeline's worker processes."""

    name: str
    function: str


@dataclass(frozen=True)
class PipelineSpec:
    """A named pipeline: ``decode`` -> model stages (and ``cpu`` stages after the first) ->
    ``topk``."""

    name: str
    models: tuple[ModelStageSpec, ...]
    labels_file: str = ""
    steps: tuple[ModelStageSpec | CpuStageSpec, ...] = ()  # between decode and topk; () = models

    @property
    def chain(self) -> tuple[ModelStageSpec | CpuStageSpec, ...]:
        """The stages between ``decode`` and ``topk``, in order."""
        return self.steps or self.models

    @property
    def stages(self) -> list[str]:
        """Stage names in order, as in metrics labels (``decode`` is ``preprocess``)."""
        return ["preprocess", *(step.name for step in self.chain), "topk"]


def default_spec() -> PipelineSpec:
    """decode -> ``SERVE_MODEL`` -> top-k; its model comes from the settings (or a test's
    factory)."""
    return PipelineSpec(DEFAULT, (ModelStageSpec("model"),))


def load_pipelines(path: str) -> dict[str, PipelineSpec]:
    """Parse the pipelines file; ``default`` is always present and first."""
    specs = {DEFAULT: default_spec()}
    if not path:
        return specs
    file = Path(path)
    try:
        doc = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise PipelineConfigError(f"cannot read pipelines file {path!r}: {exc}") from None
    except yaml.YAMLError as exc:
        raise PipelineConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("pipelines"), dict):
        raise PipelineConfigError(f"{path}: expected a mapping with a 'pipelines' mapping")
    extra = set(doc) - {"pipelines"}
    if extra:
        raise PipelineConfigError(f"{path}: unknown top-level keys {sorted(extra)}")
    for name, body in doc["pipelines"].items():
        where = f"{path}: pipeline {name!r}"
        if not isinstance(name, str) or not NAME.match(name):
            raise PipelineConfigError(
                f"{where}: names are 1-64 of a-z 0-9 _ . - (starting and ending alphanumeric)"
            )
        if name == DEFAULT:
            raise PipelineConfigError(f"{where}: 'default' is SERVE_MODEL's pipeline; rename it")
        specs[name] = _parse_pipeline(name, body, where, file.parent)
    return specs


def _parse_pipeline(name: str, body: Any, where: str, base: Path) -> PipelineSpec:
    if not isinstance(body, dict) or not isinstance(body.get("stages"), list):
        raise PipelineConfigError(f"{where}: expected a mapping with a 'stages' list")
    extra = set(body) - {"stages", "labels"}
    if extra:
        raise PipelineConfigError(
            f"{where}: unknown keys {sorted(extra)} (allowed: stages, labels)"
        )
    stages = body["stages"]
    kinds = []
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict) or stage.get("kind") not in STAGE_KINDS:
            got = stage.get("kind") if isinstance(stage, dict) else stage
            raise PipelineConfigError(
                f"{where}: stage {i}: kind {got!r} is not one of {list(STAGE_KINDS)}"
            )
        kinds.append(stage["kind"])
    if (
        len(kinds) < 3
        or kinds[0] != "decode"
        or kinds[-1] != "topk"
        or "model" not in kinds
        or not set(kinds[1:-1]) <= {"model", "cpu"}
    ):
        raise PipelineConfigError(
            f"{where}: stages must be decode, then one or more model stages (and cpu stages "
            f"after the first model), then topk; got {kinds}"
        )
    if kinds[1] != "model":
        raise PipelineConfigError(
            f"{where}: stage 1: a cpu stage must follow a model stage (decode comes first, "
            "then a model)"
        )
    for i in (0, len(stages) - 1):
        if set(stages[i]) != {"kind"}:
            raise PipelineConfigError(f"{where}: stage {i} ({kinds[i]}) takes no options")
    steps = tuple(
        _parse_model(stage, f"{where}: stage {i}", base)
        if stage["kind"] == "model"
        else _parse_cpu(stage, f"{where}: stage {i}")
        for i, stage in enumerate(stages[1:-1], start=1)
    )
    models = tuple(s for s in steps if isinstance(s, ModelStageSpec))
    names = [s.name for s in steps]
    if len(set(names)) != len(names) or {"preprocess", "topk"} & set(names):
        raise PipelineConfigError(
            f"{where}: model and cpu stage names must be unique and not 'preprocess' or 'topk'"
        )
    labels = body.get("labels") or ""
    if labels and not isinstance(labels, str):
        raise PipelineConfigError(f"{where}: labels must be a file path")
    return PipelineSpec(name, models, _path(labels, base) if labels else "", steps=steps)


def _stage_name(stage: dict[str, Any], where: str, allowed: set[str], kind: str) -> str:
    """A stage's name, after refusing keys its kind does not know."""
    extra = set(stage) - allowed
    if extra:
        raise PipelineConfigError(
            f"{where}: unknown keys {sorted(extra)}; allowed {sorted(allowed)}"
        )
    name = stage.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise PipelineConfigError(f"{where}: a {kind} stage needs a 'name' (a-z 0-9 _ . -)")
    return name


def _parse_cpu(stage: dict[str, Any], where: str) -> CpuStageSpec:
    name = _stage_name(stage, where, CPU_KEYS, "cpu")
    function = stage.get("function")
    if not isinstance(function, str) or not FUNCTION.match(function):
        raise PipelineConfigError(
            f"{where} ({name}): function must be 'package.module:function', got {function!r}"
        )
    return CpuStageSpec(name, function)


def _parse_model(stage: dict[str, Any], where: str, base: Path) -> ModelStageSpec:
    name = _stage_name(stage, where, MODEL_KEYS, "model")
    arch, file = stage.get("arch"), stage.get("file")
    if (arch is None) == (file is None):
        raise PipelineConfigError(f"{where} ({name}): give exactly one of 'arch' or 'file'")
    if arch is not None and arch not in ARCHITECTURES:
        raise PipelineConfigError(
            f"{where} ({name}): arch {arch!r} is not one of {list(ARCHITECTURES)}"
        )
    pooling = stage.get("pooling")
    if pooling not in (None, "avg", "max"):
        raise PipelineConfigError(f"{where} ({name}): pooling must be avg or max")
    include_top = stage.get("include_top", True)
    if not isinstance(include_top, bool):
        raise PipelineConfigError(f"{where} ({name}): include_top must be true or false")
    if include_top and pooling is not None:
        raise PipelineConfigError(f"{where} ({name}): pooling needs include_top: false")
    normalize = stage.get("normalize")
    if normalize not in (None, "caffe", "tf", "none"):
        raise PipelineConfigError(f"{where} ({name}): normalize must be caffe, tf or none")
    weights = str(stage.get("weights", "imagenet"))
    if file is not None and "weights" in stage:
        raise PipelineConfigError(f"{where} ({name}): a .keras file carries its own weights")
    if weights not in ("imagenet", "random"):
        weights = _path(weights, base)
    return ModelStageSpec(
        name=name,
        arch=arch,
        weights=weights,
        include_top=include_top,
        pooling=pooling,
        file=_path(str(file), base) if file is not None else None,
        normalize=normalize,
    )


def _path(value: str, base: Path) -> str:
    p = Path(value)
    return str(p if p.is_absolute() else base / p)
