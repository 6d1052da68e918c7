"""Helpers shared by the tutorial notebooks, kept here so that each notebook shows only the
steps it teaches.

The notebooks run from ``notebooks/``; this module puts the repository root on ``sys.path``
(for ``loadtest``, which is not part of the installed package) and knows where things are.
"""

from __future__ import annotations

import atexit
import io
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

# TensorFlow start-up chatter (oneDNN, CUDA probing) is noise in a notebook.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHART = ROOT / "charts" / "resnet-serve"
TOOLS = ROOT / ".tools"
HELM = TOOLS / "bin" / "helm"
KUBECTL = TOOLS / "bin" / "kubectl"
# Reports the notebooks write (git-ignored, like every report of `make loadtest`).
REPORTS = ROOT / "reports" / "notebooks"
# Where the notebooks' throwaway files go (a tiny model, logs).
WORK = Path(tempfile.gettempdir()) / "resnet-serve-notebooks"

# Pictures that ship with scikit-image (public-domain or CC0 photographs).
SAMPLES = ("chelsea", "coffee", "astronaut", "rocket")


def is_local(cluster: str | None) -> bool:
    """``CLUSTER`` empty or ``"local"``: render and print instead of touching a cluster."""
    return not cluster or cluster == "local"


def sample_images(names: tuple[str, ...] = SAMPLES) -> dict[str, np.ndarray]:
    """RGB ``uint8`` arrays of scikit-image's sample photographs."""
    from skimage import data

    return {name: np.asarray(getattr(data, name)())[..., :3] for name in names}


def jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    """Encode an RGB array as JPEG, as a client would send it."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def show_top5(images: dict[str, np.ndarray], predictions: dict[str, list], title: str = "") -> None:
    """Each image beside a bar chart of its top classes (``label``, ``score`` pairs)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(images), 2, figsize=(9, 2.4 * len(images)), squeeze=False)
    for row, (name, pixels) in enumerate(images.items()):
        axes[row, 0].imshow(pixels)
        axes[row, 0].set_title(name)
        axes[row, 0].axis("off")
        labels = [label for label, _ in predictions[name]][::-1]
        scores = [score for _, score in predictions[name]][::-1]
        axes[row, 1].barh(labels, scores, color="#2f6fdd")
        axes[row, 1].set_xlim(0, max(1e-3, max(scores)) * 1.15)
        axes[row, 1].set_xlabel("probability")
    if title:
        fig.suptitle(title, color="#b42318" if "RANDOM" in title else "black")
    fig.tight_layout()
    plt.show()


def command(args: list[str]) -> str:
    """A command line as a person would type it from the repository root."""
    words = []
    for a in map(str, args):
        if a == sys.executable:
            a = "python"
        elif a.startswith(str(ROOT) + os.sep):
            a = os.path.relpath(a, ROOT)
        words.append(shlex.quote(a))
    return " ".join(words)


def run(args: list[str], *, check: bool = True, timeout: float = 300, quiet: bool = False) -> str:
    """Run a command, print it and its output; returns the output."""
    print("$", command(args))
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    if not quiet:
        print(out.rstrip())
    if check and proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {command(args)}\n{out[-3000:]}")
    return out


def helm_template(release: str, values_files: list[str], *extra: str) -> list[dict]:
    """``helm template`` the chart with ``values_files`` (names in the chart's folder); returns
    the rendered objects."""
    import yaml

    if not HELM.exists():
        raise RuntimeError(f"{HELM} is missing: run `make tools`")
    args = [HELM, "template", release, CHART]
    for name in values_files:
        args += ["-f", CHART / name]
    out = run([*args, *extra], quiet=True)
    return [doc for doc in yaml.safe_load_all(out) if doc]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model(path: Path | None = None) -> Path:
    """A small untrained Keras classifier (64x64 input, 1000 classes) saved as ``.keras``: it
    stands in for ResNet50 where a notebook needs a service that starts and answers fast."""
    path = path or WORK / "tiny.keras"
    if path.exists():
        return path
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1000)(x), name="tiny")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


class LocalService:
    """``python -m service`` on a free loopback port, stopped at the end of the notebook.

    Args:
        env: ``SERVE_*`` settings (the host and port are chosen here).
        name: a name for its log file.
    """

    def __init__(self, env: dict[str, str], name: str = "service"):
        WORK.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = WORK / f"{name}-{self.port}.log"
        self.env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **env,
            "SERVE_HOST": "127.0.0.1",
            "SERVE_PORT": str(self.port),
        }
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> LocalService:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        atexit.register(self.stop)
        started = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() - started > timeout:
                self.stop()
                raise TimeoutError(f"not ready in {timeout:g} s:\n{self.log()}")
            time.sleep(0.3)
        waited = time.monotonic() - started
        print(f"ready at {self.url} after {waited:.1f} s (log: {self.log_path})")
        return self

    def log(self, tail: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def stop(self) -> int | None:
        """SIGTERM, as Kubernetes sends it: the service drains and exits 0."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.terminate()
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def metric_values(text: str, names: tuple[str, ...], by: tuple[str, ...] = ()) -> dict[str, float]:
    """Each named series in Prometheus text, summed over every label not in ``by``
    (histograms: ask for their ``_count`` and ``_sum``). Keys: ``name`` or ``name{a=x,b=y}``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                kept = ",".join(f"{k}={sample.labels[k]}" for k in by if k in sample.labels)
                key = f"{sample.name}{{{kept}}}" if kept else sample.name
                out[key] = out.get(key, 0.0) + sample.value
    return out
