"""The pipelines file: the shipped example parses; every mistake is refused with where and what."""

import subprocess
import sys

import numpy as np
import pytest

from service.pipeline.config import DEFAULT, CpuStageSpec, PipelineConfigError, load_pipelines
from service.pipeline.cpu_functions import l2_normalize
from tests.support.helpers import ROOT


def test_without_a_file_only_the_default_pipeline_exists():
    specs = load_pipelines("")
    assert list(specs) == [DEFAULT]
    assert specs[DEFAULT].stages == ["preprocess", "model", "topk"]


def test_the_shipped_example_is_a_backbone_and_a_head():
    specs = load_pipelines(str(ROOT / "examples" / "pipelines.yaml"))
    assert list(specs) == [DEFAULT, "resnet50-head"]
    backbone, head = specs["resnet50-head"].models
    assert (backbone.arch, backbone.include_top, backbone.pooling) == ("resnet50", False, "avg")
    assert head.file == str(ROOT / "examples" / "head.keras")  # relative to the YAML file


GOOD_MODEL = "{kind: model, name: m, file: m.keras}"
L2 = "service.pipeline.cpu_functions:l2_normalize"


def test_cpu_stages_may_follow_any_model_stage(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "pipelines: {p: {stages: [{kind: decode}, {kind: model, name: a, file: a.keras}, "
        f"{{kind: cpu, name: unit, function: '{L2}'}}, {{kind: model, name: b, file: b.keras}}, "
        f"{{kind: cpu, name: out, function: '{L2}'}}, {{kind: topk}}]}}}}"
    )
    spec = load_pipelines(str(path))["p"]
    assert spec.stages == ["preprocess", "a", "unit", "b", "out", "topk"]
    assert [m.name for m in spec.models] == ["a", "b"]
    assert spec.chain[1] == CpuStageSpec("unit", L2)


def test_the_default_pipeline_has_no_cpu_stage():
    assert load_pipelines("")[DEFAULT].chain == load_pipelines("")[DEFAULT].models


def test_l2_normalize_gives_unit_length_and_keeps_zeros():
    out = l2_normalize(np.array([3.0, 4.0]))
    assert out.dtype == np.float32 and np.allclose(out, [0.6, 0.8])
    assert np.array_equal(l2_normalize(np.zeros(3)), np.zeros(3))


def test_the_cpu_functions_module_does_not_import_tensorflow():
    code = "import sys, service.pipeline.cpu_functions, service.engine.worker_pool; "
    code += "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[]", "a 'pipelines' mapping"),
        ("pipelines: {default: {stages: []}}", "'default' is SERVE_MODEL's pipeline"),
        ("pipelines: {Bad Name: {stages: []}}", "names are 1-64"),
        ("pipelines: {p: {stages: [{kind: decode}, {kind: topk}]}}", "one or more model stages"),
        (f"pipelines: {{p: {{stages: [{GOOD_MODEL}, {{kind: topk}}]}}}}", "stages must be decode"),
        ("pipelines: {p: {stages: [{kind: decode}, {kind: gpu}, {kind: topk}]}}", "'gpu' is not"),
        (
            "pipelines: {p: {stages: [{kind: decode}, {kind: model, name: m}, {kind: topk}]}}",
            "exactly one of 'arch' or 'file'",
        ),
        (
            "pipelines: {p: {stages: [{kind: decode}, {kind: model, name: m, arch: vgg16}, "
            "{kind: topk}]}}",
            "arch 'vgg16' is not one of",
        ),
        (
            "pipelines: {p: {stages: [{kind: decode}, {kind: model, name: m, arch: resnet50, "
            "pooling: avg}, {kind: topk}]}}",
            "pooling needs include_top: false",
        ),
        (
            f"pipelines: {{p: {{stages: [{{kind: decode}}, {GOOD_MODEL}, {GOOD_MODEL}, "
            "{kind: topk}]}}",
            "must be unique",
        ),
        (
            f"pipelines: {{p: {{stages: [{{kind: decode, size: 3}}, {GOOD_MODEL}, "
            "{kind: topk}]}}",
            "takes no options",
        ),
        (
            f"pipelines: {{p: {{stages: [{{kind: decode}}, {GOOD_MODEL}, {{kind: topk}}], x: 1}}}}",
            "unknown keys",
        ),
        ("pipelines: [", "not valid YAML"),
        (
            f"pipelines: {{p: {{stages: [{{kind: cpu, name: c, function: '{L2}'}}, "
            f"{{kind: decode}}, {GOOD_MODEL}, {{kind: topk}}]}}}}",
            "stages must be decode",
        ),
        (
            "pipelines: {p: {stages: [{kind: decode}, "
            f"{{kind: cpu, name: c, function: '{L2}'}}, {GOOD_MODEL}, {{kind: topk}}]}}}}",
            "a cpu stage must follow a model stage",
        ),
        (
            f"pipelines: {{p: {{stages: [{{kind: decode}}, {GOOD_MODEL}, "
            "{kind: cpu, name: c, function: 'no colon here'}, {kind: topk}]}}",
            "function must be 'package.module:function'",
        ),
        (
            f"pipelines: {{p: {{stages: [{{kind: decode}}, {GOOD_MODEL}, "
            "{kind: cpu, function: 'a.b:c'}, {kind: topk}]}}",
            "a cpu stage needs a 'name'",
        ),
        (
            f"pipelines: {{p: {{stages: [{{kind: decode}}, {GOOD_MODEL}, "
            "{kind: cpu, name: m, function: 'a.b:c'}, {kind: topk}]}}",
            "must be unique",
        ),
        (
            f"pipelines: {{p: {{stages: [{{kind: decode}}, {GOOD_MODEL}, "
            "{kind: cpu, name: c, function: 'a.b:c', size: 2}, {kind: topk}]}}",
            "unknown keys",
        ),
    ],
)
def test_mistakes_are_refused_with_a_message(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PipelineConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_pipelines(str(path))


def test_a_missing_file_is_refused():
    with pytest.raises(PipelineConfigError, match="cannot read"):
        load_pipelines("/no/such/pipelines.yaml")


def _one_model(model: str, extra: str = "") -> str:
    return f"pipelines: {{p: {{stages: [{{kind: decode}}, {model}, {{kind: topk}}]{extra}}}}}"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            _one_model("{kind: model, name: m, arch: resnet50, include_top: 1}"),
            "stage 1 (m): include_top must be true or false",
        ),
        (
            _one_model("{kind: model, name: m, file: m.keras, weights: w.h5}"),
            "stage 1 (m): a .keras file carries its own weights",
        ),
        (
            _one_model("{kind: model, name: m, arch: resnet50, normalize: yes}"),
            "stage 1 (m): normalize must be caffe, tf or none",
        ),
        (_one_model("{name: m}"), "stage 1: kind None is not one of"),
        (_one_model(GOOD_MODEL, ", labels: [a]"), "pipeline 'p': labels must be a file path"),
        ("pipelines: {p: 3}", "pipeline 'p': expected a mapping with a 'stages' list"),
        ("pipelines: {}\nextra: 1", "unknown top-level keys ['extra']"),
    ],
)
def test_each_field_is_checked_where_it_is(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PipelineConfigError) as exc:
        load_pipelines(str(path))
    assert message in str(exc.value) and str(exc.value).startswith(f"{path}: ")


def test_relative_weights_and_labels_are_relative_to_the_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        _one_model("{kind: model, name: m, arch: resnet50, weights: w.h5}", ", labels: l.txt")
    )
    spec = load_pipelines(str(path))["p"]
    assert spec.models[0].weights == str(tmp_path / "w.h5")
    assert spec.labels_file == str(tmp_path / "l.txt")
    assert spec.chain == spec.models


@pytest.mark.parametrize("source", [{"arch": "resnet50"}, {"file": "model.keras"}])
def test_a_configured_pipelines_model_is_built_after_the_backend_is_configured(monkeypatch, source):
    """SERVE_PIPELINE may name a configured pipeline, which then starts first: the backend's
    threads, GPU memory and precision must be set before its models are built."""
    from service.engine.pipeline import load_stage_model
    from service.model import backends, loader
    from service.pipeline.config import ModelStageSpec
    from service.settings import Settings

    calls: list[str] = []
    monkeypatch.setattr(backends, "configure", lambda settings: calls.append("configure"))
    monkeypatch.setattr(backends, "require_gpu", lambda settings: None)
    monkeypatch.setattr(loader, "load_model", lambda *a, **k: calls.append("build"))
    monkeypatch.setattr(loader, "load_keras_file", lambda *a, **k: calls.append("build"))
    load_stage_model(ModelStageSpec(name="m", **source), Settings())
    assert calls == ["configure", "build"]
