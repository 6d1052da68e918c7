"""The pipelines file: the shipped example parses; every mistake is refused with where and what."""

from pathlib import Path

import pytest

from service.pipeline.config import DEFAULT, PipelineConfigError, load_pipelines

ROOT = Path(__file__).resolve().parents[2]


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
