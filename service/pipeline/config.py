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

The file's shape is declared once, as pydantic dataclasses (the stage specs the engine reads)
and models; :func:`_explain` words pydantic's first error as the file's author needs it: the
file, the pipeline, the stage and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass as spec_dataclass

from ..model.architectures import ARCHITECTURES

DEFAULT = "default"
CPU_KINDS = ("decode", "cpu")
STAGE_KINDS = (*CPU_KINDS, "model", "topk")
NAME = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,62}[a-z0-9])?$")
FUNCTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
RESERVED = ("preprocess", "topk")  # the metrics labels of decode and topk

Name = Annotated[StrictStr, StringConstraints(pattern=NAME.pattern)]
CLOSED = ConfigDict(extra="forbid")


class PipelineConfigError(ValueError):
    """The pipelines file is not valid; the message says where and what is allowed."""


# -- what a stage is (the engine reads these) ---------------------------------------------


@spec_dataclass(frozen=True, config=CLOSED)
class ModelStageSpec:
    """One model stage: a Keras ResNet (``arch``) or a whole model from a ``.keras`` file.
    Relative paths (``file``, a weights file) are relative to the pipelines file."""

    name: Name
    arch: StrictStr | None = None
    weights: StrictStr = "imagenet"
    include_top: StrictBool = True
    pooling: Literal["avg", "max"] | None = None
    file: StrictStr | None = None
    normalize: Literal["caffe", "tf", "none"] | None = None
    kind: Literal["model"] = "model"

    @model_validator(mode="before")
    @classmethod
    def _one_source(cls, data: Any) -> Any:
        """In the file, a stage names its model; ``default``'s comes from the settings."""
        if not isinstance(data, dict):
            return data
        if (data.get("arch") is None) == (data.get("file") is None):
            raise ValueError("give exactly one of 'arch' or 'file'")
        if data.get("file") is not None and "weights" in data:
            raise ValueError("a .keras file carries its own weights")
        return data

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str | None) -> str | None:
        if arch is not None and arch not in ARCHITECTURES:
            raise ValueError(f"arch {arch!r} is not one of {list(ARCHITECTURES)}")
        return arch

    @field_validator("file", "weights")
    @classmethod
    def _relative_to_the_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        base = (info.context or {}).get("base")
        if value is None or base is None or value in ("imagenet", "random"):
            return value
        return _path(value, base)

    @model_validator(mode="after")
    def _consistent(self) -> ModelStageSpec:
        if self.include_top and self.pooling is not None:
            raise ValueError("pooling needs include_top: false")
        return self


@spec_dataclass(frozen=True, config=CLOSED)
class CpuStageSpec:
    """A CPU stage between model stages: ``function`` (``package.module:function``) applied to
    each item in the pipeline's worker processes."""

    name: Name
    function: Annotated[StrictStr, StringConstraints(pattern=FUNCTION.pattern)]
    kind: Literal["cpu"] = "cpu"


class _Decode(BaseModel):
    model_config = CLOSED
    kind: Literal["decode"]


class _TopK(BaseModel):
    model_config = CLOSED
    kind: Literal["topk"]


Stage = Annotated[_Decode | ModelStageSpec | CpuStageSpec | _TopK, Field(discriminator="kind")]
STAGE_TYPES: dict[str, Any] = {
    "decode": _Decode,
    "model": ModelStageSpec,
    "cpu": CpuStageSpec,
    "topk": _TopK,
}


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """A named pipeline: ``decode`` -> ``chain`` (model stages, and ``cpu`` stages after the
    first) -> ``topk``."""

    name: str
    chain: tuple[ModelStageSpec | CpuStageSpec, ...]
    labels_file: str = ""

    @property
    def models(self) -> tuple[ModelStageSpec, ...]:
        """The chain's model stages, in order."""
        return tuple(s for s in self.chain if isinstance(s, ModelStageSpec))

    @property
    def stages(self) -> list[str]:
        """Stage names in order, as in metrics labels (``decode`` is ``preprocess``)."""
        return ["preprocess", *(step.name for step in self.chain), "topk"]


def default_spec() -> PipelineSpec:
    """decode -> ``SERVE_MODEL`` -> top-k; its model comes from the settings (or a test's
    factory)."""
    return PipelineSpec(DEFAULT, (ModelStageSpec("model"),))


# -- the file -----------------------------------------------------------------------------


class _Pipeline(BaseModel):
    model_config = CLOSED
    stages: list[Stage]
    labels: StrictStr = ""

    @field_validator("labels")
    @classmethod
    def _relative_to_the_file(cls, labels: str, info: ValidationInfo) -> str:
        base = (info.context or {}).get("base")
        return _path(labels, base) if labels and base is not None else labels

    @model_validator(mode="after")
    def _ordered(self) -> _Pipeline:
        kinds = [s.kind for s in self.stages]
        if (
            len(kinds) < 3
            or kinds[0] != "decode"
            or kinds[-1] != "topk"
            or "model" not in kinds
            or not set(kinds[1:-1]) <= {"model", "cpu"}
        ):
            raise ValueError(
                "stages must be decode, then one or more model stages (and cpu stages after "
                f"the first model), then topk; got {kinds}"
            )
        if kinds[1] != "model":
            raise ValueError(
                "stage 1: a cpu stage must follow a model stage (decode comes first, then a model)"
            )
        names = [s.name for s in self.chain]
        if len(set(names)) != len(names) or set(RESERVED) & set(names):
            raise ValueError(
                "model and cpu stage names must be unique and not 'preprocess' or 'topk'"
            )
        return self

    @property
    def chain(self) -> tuple[ModelStageSpec | CpuStageSpec, ...]:
        return tuple(s for s in self.stages if isinstance(s, ModelStageSpec | CpuStageSpec))


class _File(BaseModel):
    model_config = CLOSED
    pipelines: dict[Name, _Pipeline]

    @field_validator("pipelines", mode="wrap")
    @classmethod
    def _not_default(cls, value: Any, handler: Any) -> Any:
        if isinstance(value, dict) and DEFAULT in value:
            raise ValueError(
                f"pipeline {DEFAULT!r}: 'default' is SERVE_MODEL's pipeline; rename it"
            )
        return handler(value)


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
    try:
        parsed = _File.model_validate(doc, context={"base": file.parent})
    except ValidationError as exc:
        raise PipelineConfigError(f"{path}: {_explain(exc.errors(), doc)}") from None
    for name, body in parsed.pipelines.items():
        specs[name] = PipelineSpec(name, body.chain, body.labels)
    return specs


# -- pydantic's errors in the file's terms ------------------------------------------------

# What a field must be, for errors of type or form (a validator's own message is kept).
MUST_BE = {
    "pipelines": "expected a mapping with a 'pipelines' mapping",
    "stages": "expected a mapping with a 'stages' list",
    "labels": "labels must be a file path",
    "[key]": "names are 1-64 of a-z 0-9 _ . - (starting and ending alphanumeric)",
    "name": "a {kind} stage needs a 'name' (a-z 0-9 _ . -)",
    "function": "function must be 'package.module:function', got {input!r}",
    "arch": "arch must be one of " + str(list(ARCHITECTURES)),
    "weights": "weights must be imagenet, random or a weights file",
    "file": "file must be the path of a .keras file",
    "include_top": "include_top must be true or false",
    "pooling": "pooling must be avg or max",
    "normalize": "normalize must be caffe, tf or none",
}


EXTRA = ("extra_forbidden", "unexpected_keyword_argument")  # of a model, of a dataclass


def _explain(errors: list[Any], doc: Any) -> str:
    """The first error, as ``pipeline 'p': stage 2 (head): what is wrong``."""
    error = errors[0]
    loc, kind = tuple(error["loc"]), error["type"]
    if not isinstance(doc, dict) or (kind == "missing" and loc == ("pipelines",)):
        return MUST_BE["pipelines"]
    where: list[str] = []
    owner: Any = _File  # the declaration the error is in
    if len(loc) >= 2:
        where.append(f"pipeline {loc[1]!r}")
        owner = _Pipeline
    stage_kind = ""
    if len(loc) >= 4 and loc[2] == "stages":
        stage = doc["pipelines"][loc[1]]["stages"][loc[3]]
        stage_kind = loc[4] if len(loc) >= 5 else ""
        owner = STAGE_TYPES.get(stage_kind, owner)
        label = stage.get("name") if stage_kind in ("model", "cpu") else stage_kind
        named = isinstance(label, str) and label and loc[5:6] != ("name",)
        where.append(f"stage {loc[3]} ({label})" if named else f"stage {loc[3]}")
    prefix = ": ".join(where) + ": " if where else ""
    if kind in ("union_tag_invalid", "union_tag_not_found", "model_attributes_type") and (
        len(loc) == 4
    ):
        got = doc["pipelines"][loc[1]]["stages"][loc[3]]
        got = got.get("kind") if isinstance(got, dict) else got
        return f"{prefix}kind {got!r} is not one of {list(STAGE_KINDS)}"
    if kind in EXTRA:
        extra = sorted(
            str(e["loc"][-1]) for e in errors if e["type"] in EXTRA and e["loc"][:-1] == loc[:-1]
        )
        if owner in (_Decode, _TopK):
            return f"{prefix}takes no options"
        level = "top-level " if owner is _File else ""
        return f"{prefix}unknown {level}keys {extra}; allowed {_fields(owner)}"
    if kind == "value_error":
        return prefix + str(error["ctx"]["error"])
    field = "stages" if len(loc) == 2 else str(loc[-1]) if loc else "pipelines"
    wording = MUST_BE.get(field, error["msg"])
    return prefix + wording.format(kind=stage_kind, input=error.get("input"))


def _fields(owner: Any) -> list[str]:
    if dataclasses.is_dataclass(owner):
        return sorted(f.name for f in dataclasses.fields(owner))
    return sorted(owner.model_fields)


def _path(value: str, base: Path) -> str:
    p = Path(value)
    return str(p if p.is_absolute() else base / p)
