"""Write the table of SERVE_* environment variables into README.md (between the markers).

python scripts/settings_table.py          # rewrite README.md
python scripts/settings_table.py --check  # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- settings:start -->", "<!-- settings:end -->"


def comments() -> dict[str, str]:
    """Each field's documentation: the comment block above it, or its trailing comment."""
    import ast
    import io
    import tokenize

    source = (ROOT / "service" / "settings.py").read_text()
    lines = source.splitlines()
    trailing: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and lines[tok.start[0] - 1].strip() != tok.string:
            trailing[tok.start[0]] = tok.string.lstrip("# ").strip()
    settings_class = next(
        n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "Settings"
    )
    out: dict[str, str] = {}
    for node in settings_class.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        row = node.lineno - 2
        while row >= 0 and lines[row].strip().startswith("#"):
            text = lines[row].strip().lstrip("#").strip()
            if text.startswith("--"):
                break
            above.insert(0, text)
            row -= 1
        after = [
            trailing[r]
            for r in range(node.lineno, (node.end_lineno or node.lineno) + 1)
            if r in trailing
        ]
        out[node.target.id] = " ".join(above + after)
    return out


def table() -> str:
    sys.path.insert(0, str(ROOT))
    from service.settings import Settings

    docs = comments()

    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        if isinstance(default, bool):
            shown = str(default).lower()
        elif isinstance(default, list):
            shown = ",".join(str(v) for v in default)
        elif hasattr(default, "get_secret_value"):
            shown = "(secret)" if default.get_secret_value() else "(empty)"
        elif default in ("", None):
            shown = "(empty)"
        else:
            shown = json.dumps(default) if isinstance(default, str) else str(default)
        meaning = (field.description or docs.get(name, "")).replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `SERVE_{name.upper()}` | `{shown}` | {meaning} |")
    return "\n".join(rows)


def render(readme: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    path = ROOT / "README.md"
    current = path.read_text()
    wanted = render(current)
    if args.check:
        if current != wanted:
            sys.stderr.write(
                "README.md settings table is out of date: run scripts/settings_table.py\n"
            )
            return 1
        return 0
    path.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
