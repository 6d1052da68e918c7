"""The few tests that build the real ResNet architectures (random weights: no download here)."""

import importlib

import numpy as np
import pytest

from service.model.architectures import ARCHITECTURES
from service.model.labels import imagenet_labels
from service.model.normalize import normalize
from service.preprocess.decode import PreprocessConfig, decode
from tests.support.helpers import encode, photo_like

pytestmark = pytest.mark.resnet


@pytest.fixture(scope="module")
def resnet50():
    from service.model.loader import load_model

    return load_model("resnet50", "random")


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_each_architecture_uses_its_own_keras_preprocessing(name):
    arch = ARCHITECTURES[name]
    keras_module = importlib.import_module(f"keras.applications.{arch.keras_module}")
    pixels = decode(encode(photo_like()), PreprocessConfig()).pixels
    expected = keras_module.preprocess_input(pixels.astype(np.float32)[None])[0]
    np.testing.assert_allclose(normalize(pixels, arch.normalize), expected, atol=1e-4)
    keras = importlib.import_module("keras")
    assert callable(getattr(keras.applications, arch.constructor))


def test_compiled_runner_equals_keras_predict_on_preprocess_input(resnet50):
    from keras.applications.resnet50 import preprocess_input

    from service.model.backends import make_runner

    runner = make_runner(resnet50, [1, 2, 4])
    runner.warmup()
    pixels = np.stack(
        [decode(encode(photo_like(seed=s)), PreprocessConfig()).pixels for s in (0, 1, 2)]
    )
    out, padded, _, _ = runner.run(pixels)
    assert padded == 4 and runner.compilations == 1
    expected = resnet50.model.predict(preprocess_input(pixels.astype(np.float32)), verbose=0)
    np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-3)


def test_imagenet_weights_are_read_from_the_keras_cache(resnet50, tmp_path, monkeypatch):
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    from service.model.loader import load_model

    # The same legacy-HDF5 layout as the published ImageNet file, written from our model.
    cache = tmp_path / "models"
    cache.mkdir()
    with h5py.File(cache / ARCHITECTURES["resnet50"].weights_file(), "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, resnet50.model)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    loaded = load_model("resnet50", "imagenet", strict=True)
    assert not loaded.random_weights
    assert loaded.weights_source.startswith("imagenet:")
    x = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)
    np.testing.assert_allclose(
        loaded.model(x, training=False).numpy(),
        resnet50.model(x, training=False).numpy(),
        atol=1e-4,
    )


def test_service_with_resnet50_answers_imagenet_labels(make_client, jpeg_bytes):
    client = make_client(
        model_factory=None,
        model="resnet50",
        weights="random",
        batch_buckets=[1, 2],
        max_batch_size=2,
    )
    r = client.post("/v1/classify", content=jpeg_bytes, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"][0]
    labels = imagenet_labels()
    assert all(labels[p["class_id"]] == p["label"] for p in preds)
    (model,) = client.get("/v1/models").json()["models"]
    assert model["architecture"] == "resnet50"
    assert model["input_shape"] == [224, 224, 3]
    assert model["num_classes"] == 1000
    assert model["random_weights"] is True
    assert any("RANDOM" in w for w in model["warnings"])
