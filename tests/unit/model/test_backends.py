"""The model stage on every Keras backend: the same answers as TensorFlow on the same pixels,
every bucket compiled at warm-up and nothing after, and a clear refusal of a backend that
cannot run.

Each backend runs in a process of its own (tests/support/backend_probe.py): Keras takes its
backend at its first import, and this test process has TensorFlow's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.errors import BackendUnavailable
from service.model import backends
from tests.support.helpers import ROOT

# float32 on one CPU, one graph compiled by XLA against TensorFlow's kernels: sums in another
# order. The tiny model's probabilities moved by 2e-9 when measured; the ranking is the same.
TOLERANCE = 1e-5


def probe(backend: str, out: Path, pixels: Path, *args: str, timeout: float = 600) -> dict:
    """The probe's results for ``backend`` (a subprocess)."""
    cmd = [sys.executable, "-m", "tests.support.backend_probe", backend, str(out)]
    done = subprocess.run(
        [*cmd, "--pixels", str(pixels), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as data:
        return {key: data[key] for key in data.files}


def noise(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_results(tiny_model_file, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("backends")
    np.save(folder / "pixels.npy", noise(6, 32))
    model = ("--keras-file", str(tiny_model_file), "--buckets", "1,2,4")
    return {
        b: probe(b, folder / f"{b}.npz", folder / "pixels.npy", *model) for b in backends.BACKENDS
    }


def test_every_backend_answers_as_tensorflow_does(tiny_results):
    reference = tiny_results["tensorflow"]["probabilities"]
    for backend, result in tiny_results.items():
        probs = result["probabilities"]
        assert probs.shape == (6, 10), backend
        np.testing.assert_allclose(probs, reference, rtol=0, atol=TOLERANCE, err_msg=backend)
        # Each image alone, read in place from an aligned buffer as from a front end's slot.
        np.testing.assert_allclose(
            result["alone"], reference, rtol=0, atol=TOLERANCE, err_msg=backend
        )
        np.testing.assert_array_equal(
            np.argsort(-probs, axis=1)[:, :5], np.argsort(-reference, axis=1)[:, :5]
        )


def test_warm_up_compiles_every_bucket_and_serving_compiles_nothing(tiny_results):
    tf, jax = tiny_results["tensorflow"], tiny_results["jax"]
    assert int(tf["warmed"]) == int(tf["served"]) == 1  # one trace for every bucket
    assert int(jax["warmed"]) == int(jax["served"]) == 3  # one executable per bucket
    assert str(jax["backend"]) == "jax" and str(jax["device"]) == "cpu:0"
    assert str(tf["backend"]) == "tensorflow" and str(tf["device"]).endswith("CPU:0")


def test_jax_on_the_cpu_hands_the_host_buffer_to_the_call_without_device_put(tiny_results):
    """On the CPU the device is the host: ``jax.device_put`` would only add its dispatch and a
    copy (~0.1 ms for one image, measured in docs/BENCHMARKS.md); on a GPU it starts the copy
    early."""
    assert str(tiny_results["jax"]["handed"]) == "numpy.ndarray"


def test_a_backend_keras_cannot_switch_to_is_refused_with_the_reason():
    import keras  # this process's Keras: TensorFlow's

    assert keras.backend.backend() == "tensorflow"
    with pytest.raises(BackendUnavailable, match="Keras was imported with tensorflow"):
        backends.check("jax")
    backends.check("tensorflow")


def test_a_backend_that_is_not_installed_is_refused_with_the_extra_to_install(monkeypatch):
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendUnavailable, match=r"jax is not installed.*extra jax"):
        backends.check("jax")


def test_an_unknown_backend_is_refused_by_the_settings_and_by_the_server(tmp_path):
    from pydantic import ValidationError

    from service.settings import Settings

    with pytest.raises(ValidationError, match="tensorflow"):
        Settings(backend="torch")
    done = subprocess.run(
        [sys.executable, "-m", "service"],
        env={"PATH": "/usr/bin:/bin", "SERVE_BACKEND": "torch", "HOME": str(tmp_path)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr  # refused before anything starts
    assert "SERVE_BACKEND='torch'" in done.stderr and "jax" in done.stderr
