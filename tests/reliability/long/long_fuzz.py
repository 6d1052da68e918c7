"""The full decode fuzz of `make reliability`: FUZZ_EXAMPLES mutants per seed format."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "security"))

from fuzz_decode import FORMATS, fuzz  # noqa: E402
from harness import DecodeSandbox  # noqa: E402

REPORTS = Path(__file__).resolve().parents[3] / "reports" / "reliability"


@pytest.mark.parametrize("fmt", FORMATS)
def test_full_decode_fuzz(fmt):
    examples = int(os.environ.get("FUZZ_EXAMPLES", "2000"))
    box = DecodeSandbox(timeout_s=20)
    try:
        seen = fuzz(fmt, examples, box)
    finally:
        box.close()
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / f"fuzz-{fmt.lower()}.json").write_text(json.dumps(dict(seen), indent=2))
    print(f"\nFUZZ {fmt}: {sum(seen.values())} inputs, outcomes {dict(seen)}")
    assert sum(seen.values()) >= examples
