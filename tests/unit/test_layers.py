"""The import graph of ``service/`` (every import statement, at module level or inside a
function): no circle, and each layer imports only the layers below it."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

from tests.support.helpers import ROOT

SERVICE = ROOT / "service"

# Imported by every layer; import nothing of the service above them.
BASE = {"service.errors", "service.cpus", "service.rundir", "service.settings", "service.auth"}
# What a front end runs: never the accelerator process's code. (The supervisor, in
# service.server too, checks the backend and the weights before it starts anything.)
FRONT_END = ("service.api", "service.grpc", "service.codecs", "service.dataplane")
FRONT_END += ("service.preprocess", "service.server", "service.jobs")
SUPERVISOR = "service.server.supervisor"


def modules() -> dict[str, Path]:
    found = {}
    for path in SERVICE.rglob("*.py"):
        if "generated" in path.parts:
            continue
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports() -> dict[str, set[str]]:
    """module -> the service modules it imports."""
    known = modules()
    graph: dict[str, set[str]] = collections.defaultdict(set)
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    target = ".".join(parts + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [target, *(f"{target}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            graph[name].update(c for c in candidates if c in known and c != name)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in list(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def offenders(graph: dict[str, set[str]], importer, imported) -> list[str]:
    return sorted(
        f"{a} -> {b}" for a, targets in graph.items() if importer(a) for b in targets if imported(b)
    )


def test_no_module_imports_itself_back():
    assert circles(imports()) == []


def test_the_base_modules_import_nothing_above_them():
    graph = imports()
    assert offenders(graph, BASE.__contains__, lambda b: b not in BASE) == []


def test_a_front_end_imports_nothing_of_the_accelerator_process():
    graph = imports()
    found = offenders(
        graph,
        lambda a: a.startswith(FRONT_END) and a != SUPERVISOR,
        lambda b: b.startswith(
            ("service.engine", "service.model.backends", "service.model.runner")
        ),
    )
    assert found == []


def test_the_accelerator_process_and_the_model_import_no_transport():
    graph = imports()
    found = offenders(
        graph,
        lambda a: a.startswith(("service.engine", "service.model", "service.wire")),
        lambda b: b.startswith(FRONT_END) or b == "service.app",
    )
    assert found == []


def test_the_wire_is_all_the_two_processes_share_of_each_other():
    graph = imports()
    assert (
        offenders(
            graph,
            lambda a: a.startswith("service.wire"),
            lambda b: b.startswith(("service.engine", "service.dataplane", "service.model")),
        )
        == []
    )
