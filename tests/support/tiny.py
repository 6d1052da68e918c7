"""A tiny Keras classifier that stands in for ResNet in fast tests (same input contract)."""

from __future__ import annotations

from pathlib import Path

from service.model.loader import LoadedModel


def build_tiny(size: int = 32, classes: int = 10, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes)(x)
    return keras.Model(inputs, outputs, name="tiny")


def tiny_loaded(size: int = 32, classes: int = 10) -> LoadedModel:
    return LoadedModel(
        model=build_tiny(size, classes),
        arch="tiny",
        normalize="caffe",
        input_size=(size, size),
        num_classes=classes,
        weights_source="random",
        random_weights=True,
    )


def save_tiny(path: Path, size: int = 32, classes: int = 10) -> Path:
    build_tiny(size, classes).save(path)
    return path


def build_tiny_backbone(size: int = 32, features: int = 6, seed: int = 1):
    """A tiny feature extractor: image in, ``features`` floats out (like ResNet pooling=avg)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(features, 3, strides=4, activation="relu")(inputs)
    outputs = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, outputs, name="tiny_backbone")


def build_tiny_head(features: int = 6, classes: int = 3, seed: int = 2):
    """A tiny classification head on feature vectors, ending in a softmax."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((features,))
    outputs = keras.layers.Dense(classes, activation="softmax")(inputs)
    return keras.Model(inputs, outputs, name="tiny_head")
