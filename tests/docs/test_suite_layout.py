"""Guards for the test suite's own layout: tests are packages and import each other by name."""

from tests.support.helpers import ROOT

TESTS = ROOT / "tests"


def _modules():
    return [p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts]


def test_every_test_folder_is_a_package():
    # Without __init__.py, two test files with one basename collide in sys.modules.
    folders = {p.parent for p in _modules()}
    assert (
        sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists()) == []
    )


def test_no_test_edits_sys_path_or_star_imports():
    me = "test_suite_layout.py"
    offenders = [
        str(p.relative_to(ROOT))
        for p in _modules()
        if p.name != me
        and any(s in p.read_text() for s in ("sys.path.insert", "sys.path.append", "import *"))
    ]
    assert offenders == []


def test_no_test_imports_from_conftest():
    # `from conftest import` gets whichever conftest module was imported first.
    offenders = [
        str(p.relative_to(ROOT))
        for p in _modules()
        if "from conftest import" in p.read_text() and p.name != "test_suite_layout.py"
    ]
    assert offenders == []
