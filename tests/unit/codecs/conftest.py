"""What the codec tests share: settings, a pipeline's description, a result to encode."""

import numpy as np
import pytest

from service.dataplane.postprocess import Prediction
from service.dataplane.request import InferResult, Timing
from service.pipeline.info import PipelineInfo
from service.settings import Settings


@pytest.fixture
def settings() -> Settings:
    return Settings(max_images_per_request=4, default_top_k=3)


@pytest.fixture
def info() -> PipelineInfo:
    """A ready pipeline of 32x32 inputs and three labelled classes."""
    return PipelineInfo(
        name="default",
        model_name="resnet50",
        state="ready",
        input_size=(32, 32),
        num_classes=3,
        labels=("cat", "dog", "fox"),
    )


@pytest.fixture
def result(info: PipelineInfo) -> InferResult:
    """Two images' probabilities and their top-2 predictions."""
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32)
    predictions = [
        [Prediction("dog", 1, 0.7), Prediction("fox", 2, 0.2)],
        [Prediction("cat", 0, 0.5), Prediction("fox", 2, 0.3)],
    ]
    timing = Timing(1.0, 2.0, 3.0, 7.5, [2, 2])
    return InferResult(info, probs, predictions, timing)
