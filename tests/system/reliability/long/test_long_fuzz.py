"""The full decode fuzz of `make reliability`: FUZZ_EXAMPLES mutants per seed format."""

from __future__ import annotations

import json
import os

import pytest

from tests.support.harness import DecodeSandbox
from tests.support.helpers import ROOT
from tests.system.security.fuzz_decode import FORMATS, fuzz

# `make reliability` runs these (minutes); `make test` deselects them (pyproject.toml).
pytestmark = pytest.mark.long

REPORTS = ROOT / "reports" / "reliability"


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
