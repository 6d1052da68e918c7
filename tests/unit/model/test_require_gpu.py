"""SERVE_REQUIRE_GPU: a GPU pod that got no usable GPU refuses to load its model, saying why,
instead of running on the CPU while it holds the GPU. (This machine has no GPU.)"""

from __future__ import annotations

import pytest

from service.engine.pipeline import default_model_factory
from service.model.backends import GpuUnavailable, gpu_devices, require_gpu
from service.settings import Settings


def test_this_machine_has_no_gpu():
    assert gpu_devices() == []


def test_required_gpu_missing_is_refused_with_the_reason():
    with pytest.raises(GpuUnavailable) as exc:
        require_gpu(Settings(require_gpu=True))
    message = str(exc.value)
    assert "SERVE_REQUIRE_GPU=true" in message and "sees no GPU" in message
    assert "RuntimeClass" in message and "driver" in message


def test_the_default_model_is_not_loaded_without_the_required_gpu():
    build = default_model_factory(Settings(require_gpu=True, weights="random"))
    with pytest.raises(GpuUnavailable):
        build()


def test_gpu_is_optional_by_default():
    assert Settings().require_gpu is False
    require_gpu(Settings())  # no GPU, not required: the CPU serves


def test_the_setting_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("SERVE_REQUIRE_GPU", "true")
    assert Settings().require_gpu is True
