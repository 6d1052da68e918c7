"""ResNet50 (random weights, the same file for both) on JAX answers as on TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

from service.preprocess.decode import PreprocessConfig, decode
from tests.support.helpers import encode, photo_like
from tests.unit.model.test_backends import probe

pytestmark = pytest.mark.resnet

# float32 sums in another order (XLA against TensorFlow's kernels): the probabilities moved by
# 5e-7 at most when measured; the top 5 classes are the same.
TOLERANCE = 1e-5


def test_resnet50_on_jax_answers_as_on_tensorflow(tmp_path):
    from service.model.loader import load_model

    weights = tmp_path / "resnet50.weights.h5"
    load_model("resnet50", "random").model.save_weights(weights)
    photos = [decode(encode(photo_like(seed=s)), PreprocessConfig()).pixels for s in range(3)]
    np.save(tmp_path / "pixels.npy", np.stack(photos))
    model = ("--arch", "resnet50", "--weights", str(weights), "--buckets", "1,4")
    results = {
        b: probe(b, tmp_path / f"{b}.npz", tmp_path / "pixels.npy", *model)
        for b in ("tensorflow", "jax")
    }
    tf, jax = results["tensorflow"], results["jax"]
    assert int(jax["warmed"]) == int(jax["served"]) == 2
    np.testing.assert_allclose(jax["probabilities"], tf["probabilities"], atol=TOLERANCE)
    np.testing.assert_array_equal(
        np.argsort(-jax["probabilities"], axis=1)[:, :5],
        np.argsort(-tf["probabilities"], axis=1)[:, :5],
    )
