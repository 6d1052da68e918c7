"""Keep the values table of charts/resnet-serve/README.md in sync with values.yaml.

Each value's meaning is its `# --` comment in values.yaml (helm-docs style); a comment on
a map documents the whole map. The table goes between the README's markers.

Usage: python scripts/chart_readme.py --write | --check
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "resnet-serve"
START, END = "<!-- values:start -->", "<!-- values:end -->"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/]+):(?: |$)")


def documented_keys(text: str) -> list[tuple[str, str]]:
    """(dotted key, description) for every key preceded by a `# --` comment, in file order."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and pending is not None:
            pending.append(stripped[1:].strip())
            continue
        match = KEY.match(line)
        if not match or stripped.startswith("- "):
            pending = None if not stripped else pending
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        if pending is not None:
            out.append((".".join(k for _, k in stack), " ".join(pending)))
            pending = None
    return out


def lookup(values: dict, dotted: str) -> object:
    node: object = values
    for part in dotted.split("."):
        assert isinstance(node, dict)
        node = node[part]
    return node


def undocumented(values: dict, docs: set[str], prefix: str = "") -> list[str]:
    """Leaves with no `# --` comment on themselves or on a map above them."""
    missing = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if path in docs:
            continue
        if isinstance(value, dict) and value:
            missing += undocumented(value, docs, path + ".")
        else:
            missing.append(path)
    return missing


def table(text: str) -> str:
    values = yaml.safe_load(text)
    rows = ["| Key | Default | Description |", "| --- | --- | --- |"]
    for key, desc in documented_keys(text):
        default = json.dumps(lookup(values, key), separators=(", ", ": "))
        default = default.replace("|", "\\|")
        desc = desc.replace("|", "\\|")
        rows.append(f"| `{key}` | `{default}` | {desc} |")
    return "\n".join(rows)


def render_readme(readme: str, values_text: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table(values_text)}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    values_text = (CHART / "values.yaml").read_text()
    missing = undocumented(
        yaml.safe_load(values_text), {k for k, _ in documented_keys(values_text)}
    )
    if missing:
        print(f"values without a `# --` comment: {missing}", file=sys.stderr)  # noqa: T201
        return 1
    readme_path = CHART / "README.md"
    current = readme_path.read_text()
    wanted = render_readme(current, values_text)
    if args.write:
        readme_path.write_text(wanted)
        return 0
    if current != wanted:
        sys.stderr.write("charts/resnet-serve/README.md is out of date: run `make chart-readme`\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
