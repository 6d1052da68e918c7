"""The Keras ResNet family: constructor, matching preprocessing, and cached weight file names."""

from __future__ import annotations

from dataclasses import dataclass

from .normalize import NormalizeMode


@dataclass(frozen=True)
class Architecture:
    name: str
    keras_module: str  # keras.applications.<module>
    constructor: str  # keras.applications.<constructor>
    normalize: NormalizeMode
    input_size: tuple[int, int] = (224, 224)

    def weights_file(self, include_top: bool = True) -> str:
        """File name Keras uses in its cache (``$KERAS_HOME/models``) for the ImageNet weights."""
        suffix = "" if include_top else "_notop"
        return f"{self.name}_weights_tf_dim_ordering_tf_kernels{suffix}.h5"


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("resnet50", "resnet50", "ResNet50", "caffe"),
        Architecture("resnet101", "resnet", "ResNet101", "caffe"),
        Architecture("resnet152", "resnet", "ResNet152", "caffe"),
        Architecture("resnet50v2", "resnet_v2", "ResNet50V2", "tf"),
        Architecture("resnet101v2", "resnet_v2", "ResNet101V2", "tf"),
        Architecture("resnet152v2", "resnet_v2", "ResNet152V2", "tf"),
    )
}

WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
