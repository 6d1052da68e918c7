"""Load shapes, answer checks and image sets (no server)."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from loadtest.suite import checks, images, shapes


def test_step_plan_adds_users_each_step_and_ends():
    p = shapes.ShapeParams(step_users=3, step_time=10, steps=4)
    stages = shapes.plan("step", p)
    assert [s.users for s in stages] == [3, 6, 9, 12]
    assert shapes.total_time(stages) == 40
    assert shapes.at(stages, 0).users == 3
    assert shapes.at(stages, 25).users == 9
    assert shapes.at(stages, 40) is None
    assert shapes.windows(stages)[1] == (10.0, 20.0, 6)


def test_spike_plan_returns_to_the_base_load():
    p = shapes.ShapeParams(users=2, spike_users=20, run_time=60, spike_at=10, spike_duration=5)
    stages = shapes.plan("spike", p)
    assert [(s.duration, s.users) for s in stages] == [(10, 2), (5, 20), (45, 2)]
    assert stages[1].spawn_rate >= 20  # the spike arrives within a second


def test_soak_ramps_then_holds():
    stages = shapes.plan("soak", shapes.ShapeParams(users=10, ramp_time=20, run_time=3600))
    assert [(s.duration, s.users) for s in stages] == [(20, 10), (3580, 10)]
    assert stages[0].spawn_rate == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("shape", "params", "message"),
    [
        ("step", {"steps": 0}, "steps must be positive"),
        ("spike", {"users": 5, "spike_users": 5}, "spike_users must exceed"),
        ("spike", {"run_time": 10, "spike_at": 8, "spike_duration": 5}, "must fit"),
        ("soak", {"ramp_time": 100, "run_time": 50}, "ramp_time"),
        ("wave", {}, "unknown shape"),
    ],
)
def test_impossible_shapes_are_refused(shape, params, message):
    with pytest.raises(ValueError, match=message):
        shapes.plan(shape, shapes.ShapeParams(**params))


@pytest.mark.parametrize(("text", "value"), [("90", 90), ("90s", 90), ("2m", 120), ("1h30m", 5400)])
def test_durations(text, value):
    assert shapes.seconds(text) == value


def test_bad_durations_are_refused():
    for text in ("ten", "5x", "1m30"):
        with pytest.raises(ValueError):
            shapes.seconds(text)


GOOD = {
    "model": "tiny",
    "predictions": [
        [
            {"label": "a", "class_id": 1, "score": 0.7},
            {"label": "b", "class_id": 2, "score": 0.2},
        ]
    ],
}


def test_classify_check_accepts_a_well_formed_answer():
    assert checks.classify(GOOD, images=1, top_k=2) is None


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda b: b["predictions"].append(b["predictions"][0]), "expected 1 prediction lists"),
        (lambda b: b["predictions"][0].pop(), "expected top_k=2"),
        (lambda b: b["predictions"][0][0].update(score=1.5), "not a probability"),
        (lambda b: b["predictions"][0].reverse(), "not sorted"),
        (lambda b: b["predictions"][0][1].pop("label"), "label"),
        (lambda b: b.pop("model"), "model"),
    ],
)
def test_classify_check_names_what_is_wrong(mutate, problem):
    body = json.loads(json.dumps(GOOD))
    mutate(body)
    assert problem in checks.classify(body, images=1, top_k=2)


def test_v2_check():
    out = {"name": "probabilities", "datatype": "FP32", "shape": [1, 3], "data": [0.1, 0.2, 0.7]}
    assert checks.v2_infer({"model_name": "m", "outputs": [out]}, "m") is None
    assert "model_name" in checks.v2_infer({"model_name": "x", "outputs": [out]}, "m")
    bad = {**out, "shape": [2, 3]}
    assert "needs 6" in checks.v2_infer({"model_name": "m", "outputs": [bad]})
    assert "datatype" in checks.v2_infer({"model_name": "m", "outputs": [{**out, "datatype": "F"}]})
    assert "expected [2, 3]" in checks.v2_infer({"model_name": "m", "outputs": [out]}, shape=[2, 3])
    nested = {**out, "data": [[0.1, 0.2, 0.7]]}
    assert checks.v2_infer({"model_name": "m", "outputs": [nested]}) is None


def test_tfserving_and_job_checks():
    assert checks.tfserving_predict({"predictions": [{"x": 1}, [0.1]]}, 2) is None
    assert "expected 2" in checks.tfserving_predict({"predictions": [[0.1]]}, 2)
    assert "error" in checks.tfserving_predict({"error": "boom"}, 1)
    assert checks.job_id({"job_id": "abc"}) == "abc" and checks.job_id({"id": ""}) is None
    assert checks.job_state({"status": "SUCCEEDED"}) == "done"
    assert checks.job_state({"state": "failed"}) == "failed"
    assert checks.job_state({"status": "running"}) == "pending"


def test_image_sets_are_reproducible_and_real(tmp_path):
    a = images.generate(tmp_path / "a", count=10, profile="small", seed=3)
    b = images.generate(tmp_path / "b", count=10, profile="small", seed=3)
    c = images.generate(tmp_path / "c", count=10, profile="small", seed=4)
    assert [f.sha256 for f in a] == [f.sha256 for f in b]
    assert [f.sha256 for f in a] != [f.sha256 for f in c]
    manifest = json.loads((tmp_path / "a" / images.MANIFEST).read_text())
    assert [f["name"] for f in manifest["files"]] == [f.name for f in a]
    for f in a:
        with Image.open(tmp_path / "a" / f.name) as im:
            assert im.size == (f.width, f.height) and im.format == f.format
    assert {f.size_class for f in a} == set(images.PROFILES["small"])  # every class appears
    assert len(images.load_folder(tmp_path / "a")) == 10


def test_mixed_profile_reaches_12_megapixels_with_photo_like_sizes(tmp_path):
    files = images.generate(tmp_path, count=len(images.PROFILES["mixed"]), profile="mixed")
    big = [f for f in files if f.size_class == "12mp"]
    assert len(big) == 1 and big[0].width * big[0].height >= 12_000_000
    assert big[0].format == "JPEG"  # a noisy 12 MP PNG would be tens of MB
    # A real 12 MP photo is a few MB; a flat image would be a few kB.
    assert 1_000_000 < big[0].bytes < 12_000_000
    assert (
        images.plan(100, "mixed", 0).count(("thumb", "JPEG"))
        + images.plan(100, "mixed", 0).count(("thumb", "PNG"))
        == 10
    )


def test_standard_library_png_decodes():
    data = images.pure_png(64, 48, seed=1)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.size == (64, 48) and im.mode == "RGB"
