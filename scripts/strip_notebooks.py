"""Remove outputs, execution counts and run metadata from notebooks, in place.

    python scripts/strip_notebooks.py notebooks/*.ipynb   (or: make strip-notebooks)

The tutorial notebooks are stored without outputs (tests/notebooks checks it): diffs stay
readable and nothing from one machine's run (paths, timings, random-weight classes) is kept.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def strip(path: Path) -> bool:
    """Strip one notebook; True when it changed."""
    text = path.read_text()
    nb = json.loads(text)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell.get("metadata", {}).pop("execution", None)
        cell.get("metadata", {}).pop("papermill", None)
    nb.get("metadata", {}).pop("papermill", None)
    out = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if out != text:
        path.write_text(out)
        return True
    return False


def main(paths: list[str]) -> int:
    for p in paths:
        if strip(Path(p)):
            print(f"stripped {p}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
