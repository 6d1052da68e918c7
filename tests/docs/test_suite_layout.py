"""Guards for the test suite's own layout (pytest's default import mode is 'prepend')."""

import collections

from helpers import ROOT


def test_test_modules_have_unique_basenames():
    # Two test files with one basename in different folders collide in sys.modules.
    names = collections.Counter(p.name for p in (ROOT / "tests").rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []


def test_no_test_imports_from_conftest():
    # `from conftest import` gets whichever conftest module was imported first.
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").rglob("*.py")
        if "from conftest import" in p.read_text() and p.name != "test_suite_layout.py"
    ]
    assert offenders == []
