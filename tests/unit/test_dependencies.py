"""Every third-party package the service imports when a module loads is one that installing the
package brings: a dependency of ``pyproject.toml`` (or one of theirs), or, for a model backend,
its extra. The test environment has every extra and test tool installed, so an import missing
from the dependencies passes every other test here and fails only in the image."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"
# Modules that import their extra's package at load time, loaded only when it is chosen.
BACKENDS = SERVICE / "model" / "backends"


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def _closure(requirements: list[str]) -> set[str]:
    """The distributions these requirements install, with what they require in turn."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = _name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(req.name) or []
        except md.PackageNotFoundError:
            continue
        for text in requires:
            sub = Requirement(text)
            if sub.marker is None or any(
                sub.marker.evaluate({"extra": extra}) for extra in (req.extras or {""})
            ):
                todo.append(sub)
    return seen


def _load_time_imports(path: Path) -> set[str]:
    """The top-level packages a module imports in its body (not inside functions)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("service",)}


def test_every_load_time_import_is_installed_with_the_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = _closure(project["dependencies"])
    extras = set().union(*(_closure(reqs) for reqs in project["optional-dependencies"].values()))
    providers = md.packages_distributions()
    missing = []
    for path in sorted(SERVICE.rglob("*.py")):
        if "generated" in path.parts:
            continue
        allowed = installed | extras if BACKENDS in path.parents else installed
        for module in _load_time_imports(path):
            dists = {_name(d) for d in providers.get(module, [])}
            if not dists & allowed:
                missing.append(f"{path.relative_to(ROOT)}: {module} ({', '.join(dists) or '?'})")
    assert not missing, "imported when the module loads, not installed with the package:\n" + (
        "\n".join(missing)
    )
