"""What the rest of the service may know of a pipeline: plain, picklable descriptions.

The dataplane, the protocols' metadata routes and health read these, never the stages
themselves: with the front ends in their own processes, a pipeline lives in the accelerator
process and its description is all that crosses.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
