"""What the image holds, read without a Docker engine: docker/Dockerfile's stages, build
arguments, environment and apt packages; the pip extras each variant is built with
(mk/images.mk); the extras' requirements (pyproject.toml); the pins (docker/constraints.txt)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
CONSTRAINTS = ROOT / "docker" / "constraints.txt"
IMAGES_MK = ROOT / "mk" / "images.mk"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        buf += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            if buf.strip():
                word, _, rest = buf.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            buf = ""
    return out


STEPS = instructions(DOCKERFILE.read_text())


def stages() -> dict[str, list[tuple[str, str]]]:
    named: dict[str, list[tuple[str, str]]] = {}
    current = None
    for word, rest in STEPS:
        if word == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            named[current] = []
        elif current:
            named[current].append((word, rest))
    return named


RUNTIME = stages()["runtime"]


def env_of(steps) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in steps:
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def last(word: str, steps=RUNTIME) -> str:
    return [rest for w, rest in steps if w == word][-1]


def arg_default(name: str) -> str:
    return next(
        rest.split("=", 1)[1] for w, rest in STEPS if w == "ARG" and rest.startswith(name + "=")
    )


def expand(value: str) -> str:
    """``${NAME}`` of an ENV value replaced by that build argument's default."""
    return re.sub(r"\$\{(\w+)\}", lambda m: arg_default(m.group(1)), value)


def apt_packages(steps) -> set[str]:
    """Packages of every `apt-get install` in the stage's RUN steps."""
    found: set[str] = set()
    for word, rest in steps:
        if word != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", rest):
            words = shlex.split(command)
            if words[:2] == ["apt-get", "install"]:
                found |= {w for w in words[2:] if not w.startswith("-")}
    return found


def make_recipe(target: str) -> str:
    """The recipe of a target of mk/images.mk, continuation lines joined."""
    text = IMAGES_MK.read_text().replace("\\\n", " ")
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n?)+)", text, re.M)
    assert match, f"no target {target} in {IMAGES_MK}"
    return match.group(1)


def make_var(name: str) -> str:
    match = re.search(rf"^{name}\s*\?=\s*(.*)$", IMAGES_MK.read_text(), re.M)
    assert match, f"no {name} in {IMAGES_MK}"
    return match.group(1).strip()


def build_arg(target: str, name: str) -> str | None:
    """A --build-arg of a make target, its make variables expanded; None: not passed."""
    match = re.search(rf"--build-arg {name}=(\S*)", make_recipe(target))
    if not match:
        return None
    return re.sub(r"\$\((\w+)\)", lambda m: make_var(m.group(1)), match.group(1))


def image_extras(variant: str) -> set[str]:
    """The pip extras the `gpu` (make image) or `cpu` (make image-cpu) image installs."""
    value = build_arg("image" if variant == "gpu" else "image-cpu", "EXTRAS")
    if value is None:
        value = arg_default("EXTRAS")
    return {e.strip() for e in value.split(",") if e.strip()}


def extra_requirements(extra: str) -> list[Requirement]:
    return [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][extra]]


def constraints(path: Path = CONSTRAINTS) -> dict[str, str]:
    """Name -> exact version of a constraints file (every line must be an `==` pin)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[req.name.lower()] = spec.version
    return pins
