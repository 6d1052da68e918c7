"""The last stage: probabilities and the top-k every protocol answers with."""

import numpy as np
import pytest

from service.dataplane.postprocess import Prediction, probabilities, ranked, top_k


def by_sort(row: np.ndarray, k: int) -> list[int]:
    """The definition: highest first, ties by index."""
    return sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]


def test_ranked_is_a_full_sort_cut_to_k_ties_by_index_also_at_the_cut():
    rng = np.random.default_rng(0)
    for _ in range(500):
        n = int(rng.integers(1, 40))
        row = rng.integers(0, 4, n).astype(np.float32)  # many ties
        k = int(rng.integers(1, n + 3))
        assert ranked(row, k).tolist() == by_sort(row, k), (row, k)


def test_ranked_on_a_model_sized_row():
    row = np.random.default_rng(1).random(1000).astype(np.float32)
    assert ranked(row, 5).tolist() == by_sort(row, 5)
    uniform = np.full(1000, 1e-3, np.float32)
    assert ranked(uniform, 5).tolist() == [0, 1, 2, 3, 4]


def test_nan_scores_rank_last():
    row = np.array([0.1, np.nan, 0.7, np.nan, 0.2], np.float32)
    assert ranked(row, 3).tolist() == [2, 4, 0]
    assert sorted(ranked(row, 5).tolist()[:3]) == [0, 2, 4]


@pytest.mark.parametrize("k", [0, -3])
def test_k_below_one_still_answers_the_best(k):
    assert ranked(np.array([0.2, 0.5, 0.3], np.float32), k).tolist() == [1]


def test_top_k_labels_plain_python_values():
    probs = np.array([0.1, 0.6, 0.3], np.float32)
    got = top_k(probs, 2, ("a", "b", "c"))
    assert got == [Prediction("b", 1, pytest.approx(0.6)), Prediction("c", 2, pytest.approx(0.3))]
    assert all(type(p.class_id) is int and type(p.score) is float for p in got)


def test_probabilities_keep_float32_rows_and_softmax_logits():
    rows = np.array([[0.25, 0.75]], np.float32)
    assert probabilities(rows, True) is rows  # already float32 probabilities: not copied
    as_f64 = probabilities(rows.astype(np.float64), True)
    assert as_f64.dtype == np.float32
    soft = probabilities(np.array([[0.0, np.log(3.0)]], np.float32), False)
    np.testing.assert_allclose(soft, [[0.25, 0.75]], rtol=1e-6)
