"""The ResNet families' input normalisation (``keras.applications.<family>.preprocess_input``).

The model stage applies it inside its compiled function, on the accelerator, to the ``uint8``
pixels the decode stage hands over; :func:`normalize` is its NumPy twin, for the tests and the
naive baseline. Pure NumPy: the decode stage's workers may import it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

# caffe: ResNet V1 (RGB -> BGR, minus the ImageNet mean); tf: ResNet V2 (scale to [-1, 1]).
NormalizeMode = Literal["caffe", "tf", "none"]

# keras.applications.imagenet_utils, mode="caffe": BGR means of the ImageNet training set.
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def normalize(pixels: np.ndarray, mode: NormalizeMode) -> np.ndarray:
    """NumPy equivalent of ``keras.applications.<family>.preprocess_input`` on RGB pixels."""
    x = pixels.astype(np.float32)
    if mode == "caffe":
        return x[..., ::-1] - CAFFE_MEAN_BGR
    if mode == "tf":
        return x / 127.5 - 1.0
    return x
