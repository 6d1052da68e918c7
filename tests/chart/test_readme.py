"""The chart README lists every value with its default and meaning, in sync with values.yaml."""

from __future__ import annotations

import importlib.util

import yaml

from tests.chart.chart_helpers import CHART, ROOT


def load_generator():
    spec = importlib.util.spec_from_file_location(
        "chart_readme", ROOT / "scripts" / "chart_readme.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_value_has_a_comment():
    gen = load_generator()
    text = (CHART / "values.yaml").read_text()
    assert text.startswith("# yaml-language-server: $schema=values.schema.json\n")
    docs = {key for key, _ in gen.documented_keys(text)}
    assert gen.undocumented(yaml.safe_load(text), docs) == []


def test_generator_notices_an_undocumented_value():
    gen = load_generator()
    text = (CHART / "values.yaml").read_text() + "\nextra:\n  knob: 1\n"
    docs = {key for key, _ in gen.documented_keys(text)}
    assert gen.undocumented(yaml.safe_load(text), docs) == ["extra.knob"]


def test_readme_table_is_in_sync():
    gen = load_generator()
    readme = (CHART / "README.md").read_text()
    assert readme == gen.render_readme(readme, (CHART / "values.yaml").read_text()), (
        "charts/resnet-serve/README.md is out of date: run `make chart-readme`"
    )
    for key, _ in gen.documented_keys((CHART / "values.yaml").read_text()):
        assert f"| `{key}` |" in readme
    assert '| `gpu.resourceName` | `"nvidia.com/gpu"` |' in readme
