"""One CUDA stack in the GPU image, pinned: the NVIDIA wheels that TensorFlow declares, at the
versions it was built against, and a base image with no CUDA libraries of its own to shadow or
duplicate them. Read from the installed TensorFlow (its METADATA, its build info, the RUNPATH of
its shared library), docker/constraints.txt and docker/Dockerfile."""

from __future__ import annotations

import importlib.metadata
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.docker.image_helpers import (
    CONSTRAINTS,
    DOCKERFILE,
    ROOT,
    arg_default,
    constraints,
    extra_requirements,
)

TF = importlib.metadata.distribution("tensorflow")
TF_DIR = Path(str(TF.locate_file("tensorflow")))


def and_cuda_requirements() -> dict[str, Requirement]:
    """TensorFlow's `and-cuda` extra as its METADATA declares it."""
    out = {}
    for line in TF.requires or []:
        req = Requirement(line)
        if (
            req.marker
            and req.marker.evaluate({"extra": "and-cuda"})
            and not req.marker.evaluate({"extra": ""})
        ):
            out[canonicalize_name(req.name)] = req
    return out


def build_info() -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, tensorflow as tf; print(json.dumps(tf.sysconfig.get_build_info()))",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def elf_runpath(path: Path) -> list[str]:
    """DT_RUNPATH (or DT_RPATH) of a 64-bit little-endian ELF shared object."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, path
    shoff, shentsize, shnum = (
        struct.unpack_from("<Q", data, 0x28)[0],
        *struct.unpack_from("<HH", data, 0x3A),
    )
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    dynamic = next(s for s in sections if s[1] == 6)  # SHT_DYNAMIC
    strtab = sections[dynamic[6]]  # sh_link: the dynamic string table
    entries = []
    for off in range(dynamic[4], dynamic[4] + dynamic[5], 16):
        tag, value = struct.unpack_from("<qQ", data, off)
        if tag == 0:
            break
        if tag in (15, 29):  # DT_RPATH, DT_RUNPATH
            start = strtab[4] + value
            entries += data[start : data.index(b"\0", start)].decode().split(":")
    return entries


def test_constraints_pin_every_cuda_wheel_at_the_version_tensorflow_was_built_against():
    pins = constraints()
    declared = and_cuda_requirements()
    assert pins.get("tensorflow") == TF.version, (
        f"docker/constraints.txt pins tensorflow {pins.get('tensorflow')} but {TF.version} is "
        "installed: the pins below are checked against the installed one's METADATA "
        "(update the file, or run `make venv` again)"
    )
    assert declared, "the installed TensorFlow declares no and-cuda extra"
    nvidia_pins = {name for name in pins if name.startswith("nvidia-")}
    assert nvidia_pins == set(declared), nvidia_pins ^ set(declared)
    for name, req in declared.items():
        # TensorFlow declares `>=built-against,<next-major`: the floor is the version it was
        # built and tested with.
        floors = [s.version for s in req.specifier if s.operator == ">="]
        assert floors == [pins[name]], (name, str(req.specifier), pins[name])
        assert req.specifier.contains(pins[name]), (name, str(req.specifier))


def test_the_cuda_and_cudnn_pins_are_tensorflows_build():
    info = build_info()
    assert info["is_cuda_build"] is True
    pins = constraints()
    cuda = tuple(info["cuda_version"].split(".")[:2])
    assert tuple(pins["nvidia-cuda-runtime-cu12"].split(".")[:2]) == cuda
    assert pins["nvidia-cudnn-cu12"].split(".")[0] == str(info["cudnn_version"]).split(".")[0]


def test_tensorflow_loads_the_wheels_libraries_not_the_systems():
    """The dynamic loader tries a library's RUNPATH before the system's library cache (and
    LD_LIBRARY_PATH, which the CUDA images set only to the driver's folders, before both): so
    with the wheels installed, TensorFlow's cuDNN, cuBLAS and CUDA runtime are theirs."""
    runpath = elf_runpath(TF_DIR / "libtensorflow_framework.so.2")
    folders = {
        m.group(1)
        for entry in runpath
        if (m := re.fullmatch(r"\$ORIGIN/\.\./nvidia/(\w+)/lib", entry))
    }
    assert {"cudnn", "cublas", "cuda_runtime", "cufft", "cusparse", "nccl"} <= folders, runpath
    # Each such folder is one of the pinned wheels (nvidia/<x>/lib comes from nvidia-<x>-cu12).
    pinned = {name.removeprefix("nvidia-").removesuffix("-cu12") for name in constraints()}
    for folder in {"cudnn", "cublas", "cuda_runtime"}:
        assert folder.replace("_", "-") in pinned, folder


def test_the_base_image_carries_only_the_driver_facing_pieces():
    info = build_info()
    base = arg_default("BASE_IMAGE")
    match = re.fullmatch(r"nvidia/cuda:(\d+\.\d+\.\d+)-base-ubuntu(\d+\.\d+)", base)
    assert match, f"{base}: a `-runtime` or `-cudnn` base ships a second CUDA stack"
    # Its NVIDIA_REQUIRE_CUDA tells the container runtime which drivers can run the image.
    assert match.group(1) == info["cuda_version"]
    # Ubuntu 24.04's python3 is 3.12: inside TensorFlow's and the project's supported range.
    assert match.group(2) == "24.04"


def test_the_gpu_image_installs_the_cuda_wheels_through_the_pins():
    gpu = extra_requirements("gpu")
    assert [(r.name, r.extras) for r in gpu] == [("tensorflow", {"and-cuda"})]
    text = DOCKERFILE.read_text()
    # The default build (the GPU image) installs through docker/constraints.txt.
    assert arg_default("CONSTRAINTS") == CONSTRAINTS.name
    assert "docker/${CONSTRAINTS}" in text
    install = re.search(r"RUN pip install (.*)", text).group(1)
    assert '--constraint "${CONSTRAINTS}"' in install, install


def test_the_jax_image_pins_every_wheel_jax_cuda13_needs():
    """make image-jax builds with docker/constraints-jax.txt: one version of each wheel, among
    them JAX, its CUDA 13 plugin and every NVIDIA library the plugin asks for."""
    pins = constraints(CONSTRAINTS.with_name("constraints-jax.txt"))
    jax_gpu = extra_requirements("jax-gpu")
    assert [(r.name, r.extras) for r in jax_gpu] == [("jax", {"cuda13"})]
    assert pins["jax"] == pins["jaxlib"] == pins["jax-cuda13-plugin"] == pins["jax-cuda13-pjrt"]
    assert jax_gpu[0].specifier.contains(pins["jax"])
    for needed in ("nvidia-cublas", "nvidia-cudnn-cu13", "nvidia-cuda-runtime", "nvidia-nccl-cu13"):
        assert needed in pins, needed
    images = (ROOT / "mk" / "images.mk").read_text()
    assert "--build-arg CONSTRAINTS=constraints-jax.txt" in images and "BACKEND=jax" in images


def test_the_xla_cache_flag_the_chart_sets_exists_in_tensorflow():
    """The chart sets TF_XLA_FLAGS=--tf_xla_persistent_cache_directory=...; an unknown flag in
    TF_XLA_FLAGS stops TensorFlow, so it must be one this TensorFlow parses."""
    flag = b"tf_xla_persistent_cache_directory"
    libraries = [TF_DIR / "libtensorflow_framework.so.2", TF_DIR / "libtensorflow_cc.so.2"]
    assert any(flag in lib.read_bytes() for lib in libraries if lib.exists())
