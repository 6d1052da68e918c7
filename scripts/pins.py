"""`pip freeze` on stdin -> the `name==version` lines of the names given (any spelling of the
name), in that order; exit 1 when one of them is not installed."""

from __future__ import annotations

import re
import sys


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(names: list[str]) -> int:
    frozen = {}
    for line in sys.stdin:
        name, sep, version = line.strip().partition("==")
        if sep:
            frozen[canonical(name)] = f"{name}=={version}"
    missing = [n for n in names if canonical(n) not in frozen]
    if missing:
        print(f"not installed: {missing}", file=sys.stderr)
        return 1
    print("\n".join(frozen[canonical(n)] for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
