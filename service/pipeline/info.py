"""What the rest of the service may know of a pipeline: plain, picklable descriptions.

The dataplane, the protocols' metadata routes and health read these, never the stages
themselves: with the front ends in their own processes, a pipeline lives in the accelerator
process and its description is all that crosses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import DEFAULT, CpuStageSpec, PipelineSpec

if TYPE_CHECKING:
    from ..settings import Settings


@dataclass(frozen=True)
class BatchInfo:
    """What happened to one item in the model stages, for the response's timing block:
    queue and compute time summed over the stages, the first stage's batch and padded size."""

    queue_s: float
    compute_s: float
    batch_size: int
    padded_size: int


@dataclass(frozen=True)
class StageInfo:
    """One stage as ``GET /v1/pipelines`` shows it."""

    name: str  # the stage's metrics label
    kind: str  # decode | model | cpu | topk
    model: str | None = None
    function: str | None = None
    weights: str | None = None
    input_shape: tuple[int, ...] | None = None
    input_dtype: str | None = None


@dataclass(frozen=True)
class PipelineInfo:
    """A pipeline seen as one model: the first model stage's input, the last stage's output.

    Until the pipeline has loaded, the model fields are what its configuration says
    (``input_size`` (224, 224), ``num_classes`` 0).
    """

    name: str
    model_name: str  # its name in the APIs (SERVE_MODEL_NAME for `default`)
    state: str = "created"  # created | loading | ready | draining | failed | stopped
    error: str | None = None
    arch: str = ""
    weights_source: str = ""
    random_weights: bool = False
    warnings: tuple[str, ...] = ()
    normalize: str | None = None
    input_size: tuple[int, int] = (224, 224)
    num_classes: int = 0
    outputs_probabilities: bool = False
    labels: tuple[str, ...] = field(default=(), repr=False)
    stages: tuple[StageInfo, ...] = ()
    backend: str = ""  # the Keras backend of its model stages
    device: str = ""
    instances: int = 0  # runner instances of the first model stage
    warmup_s: float = 0.0

    @property
    def ready(self) -> bool:
        return self.state == "ready"


def stage_label(pipeline: str, stage: str) -> str:
    """Metrics label of a stage: its name in ``default``, else ``pipeline/stage``."""
    return stage if pipeline == DEFAULT else f"{pipeline}/{stage}"


def model_name(settings: Settings, pipeline: str) -> str:
    """A pipeline's name in the APIs: SERVE_MODEL_NAME for ``default``."""
    return settings.model_name if pipeline == DEFAULT else pipeline


def configured_info(settings: Settings, spec: PipelineSpec) -> PipelineInfo:
    """A pipeline before it has loaded: what its configuration says."""
    default = spec.name == DEFAULT
    stages = [StageInfo(stage_label(spec.name, "preprocess"), "decode")]
    for step in spec.chain:
        label = stage_label(spec.name, step.name)
        if isinstance(step, CpuStageSpec):
            stages.append(StageInfo(label, "cpu", function=step.function))
        elif default:
            stages.append(StageInfo(label, "model", model=settings.model, weights=settings.weights))
        else:
            weights = step.weights if step.arch else step.file
            stages.append(StageInfo(label, "model", model=step.arch or step.file, weights=weights))
    stages.append(StageInfo(stage_label(spec.name, "topk"), "topk"))
    return PipelineInfo(
        name=spec.name,
        model_name=model_name(settings, spec.name),
        arch=settings.model if default else "",
        weights_source=settings.weights if default else "",
        stages=tuple(stages),
    )
