"""The contract between the chart and the image it runs: whatever a values file switches on
finds what it needs in that image. What each pod needs is read from the rendered objects (the
Redis URL it is given, the HTTPS addresses it will reach, the scripts it runs); what the image
has, from docker/Dockerfile, mk/images.mk and pyproject.toml."""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from pathlib import Path

import pytest

from tests.chart.chart_helpers import CHART, CI_VALUES, PLATFORM_VALUES, pod_specs, render
from tests.chart.test_render_validate import MATRIX
from tests.docker.image_helpers import ROOT, RUNTIME, apt_packages, extra_requirements, image_extras

REDIS_STORE = ROOT / "service" / "jobs" / "redis_store.py"
SCENARIOS = [
    ((), ()),
    *[((v,), ()) for v in PLATFORM_VALUES + CI_VALUES],
    *[((), m) for m in MATRIX],
]
SERVER_REPOSITORY = "resnet-serve"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def variant(image: str) -> str:
    """The image `make image` (gpu) or `make image-cpu` (cpu) builds for this reference."""
    return "cpu" if image.rpartition(":")[2].endswith("-cpu") else "gpu"


def needs(container: dict, settings: dict[str, str]) -> set[str]:
    """What one container of the server's image will use, from what the chart gave it."""
    out = set()
    env = {e["name"]: e for e in container.get("env", [])}
    if "SERVE_REDIS_URL" in env:
        out.add("redis")
    words = container.get("args", []) + [str(e.get("value", "")) for e in env.values()]
    if any(str(w).startswith("https://") for w in words) or settings.get(
        "SERVE_CALLBACK_ALLOWED_HOSTS"
    ):
        out.add("tls")
    if container.get("command", [""])[0] == "python3":
        out.add("python3")
    return out


def server_image_containers(objs: list[dict]):
    settings: dict[str, str] = {}
    for o in objs:
        if o["kind"] in ("ConfigMap", "Secret") and o["metadata"]["name"] == "rel-resnet-serve":
            settings |= o.get("data", {}) | o.get("stringData", {})
    for name, pod in pod_specs(objs):
        for c in pod["containers"] + pod.get("initContainers", []):
            if c["image"].startswith(SERVER_REPOSITORY + ":"):
                yield name, c, needs(c, settings)


def provided(image_variant: str) -> set[str]:
    """What an image variant has that the needs above name."""
    out = set()
    if "redis" in image_extras(image_variant):
        out.add("redis")
    apt = apt_packages(RUNTIME)
    if "ca-certificates" in apt:
        out.add("tls")
    if "python3" in apt:
        out.add("python3")
    return out


def test_the_redis_store_is_what_the_redis_extra_installs():
    """The job store imports redis-py's asyncio client, the `redis` distribution, which the
    `redis` extra requires (so "the extra is installed" means "the import works")."""
    assert "redis.asyncio" in imported_modules(REDIS_STORE)
    assert "redis" in importlib.metadata.packages_distributions()["redis"]
    assert [r.name for r in extra_requirements("redis")] == ["redis"]


@pytest.mark.parametrize("variant_name", ["gpu", "cpu"])
def test_both_images_carry_every_feature_the_chart_can_switch_on(variant_name):
    extras, apt = sorted(image_extras(variant_name)), sorted(apt_packages(RUNTIME))
    assert provided(variant_name) == {"redis", "tls", "python3"}, (
        f"the {variant_name} image lacks what the chart can ask of it: extras {extras}, "
        f"runtime apt packages {apt}"
    )


@pytest.mark.parametrize(
    "values, sets",
    SCENARIOS,
    ids=[v[0] if v else "|".join(x.split("=")[-1] for x in s) or "defaults" for v, s in SCENARIOS],
)
def test_every_rendered_pod_finds_what_it_needs_in_its_image(values, sets):
    for pod, container, wanted in server_image_containers(render(values, sets)):
        missing = wanted - provided(variant(container["image"]))
        assert not missing, (
            f"{pod}/{container['name']} ({container['image']}) needs {sorted(missing)}"
        )


def test_the_needs_are_seen_in_the_scenarios_that_switch_them_on():
    """The scenarios above exercise each need on each variant (else they would prove nothing)."""
    seen: dict[str, set[str]] = {"gpu": set(), "cpu": set()}
    for values, sets in SCENARIOS:
        for _, container, wanted in server_image_containers(render(values, sets)):
            seen[variant(container["image"])] |= wanted
    assert seen == {"gpu": {"redis", "tls", "python3"}, "cpu": {"redis", "tls", "python3"}}


def test_chart_scripts_need_nothing_beyond_pythons_standard_library():
    """The init container runs in the server image and the `helm test` pod in any Python
    image: their scripts import only the standard library."""
    for script in (CHART / "files").glob("*.py"):
        modules = {m.split(".")[0] for m in imported_modules(script)}
        assert modules <= set(sys.stdlib_module_names) | {"__future__"}, (script.name, modules)
