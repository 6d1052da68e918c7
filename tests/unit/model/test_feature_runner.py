"""The model runner on a float32 feature-vector model (a head): traced once, exact outputs."""

import numpy as np

from service.model.backends import make_runner
from service.model.loader import LoadedModel
from tests.support.tiny import build_tiny_head


def test_a_feature_model_runs_float32_batches_equal_to_keras():
    head = build_tiny_head(features=6, classes=3)
    loaded = LoadedModel(head, "head", "none", (0, 0), 3, "random", True, True)
    runner = make_runner(loaded, [1, 2, 4])
    runner.warmup()
    assert runner.input_shape == (6,) and runner.input_dtype == np.float32
    x = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32) * 100
    out, padded, _, _ = runner.run(list(x))
    assert padded == 4 and runner.compilations == 1
    np.testing.assert_allclose(out, head(x, training=False).numpy(), rtol=1e-5, atol=1e-6)
