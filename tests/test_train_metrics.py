"""Ranking metrics against hand-computed values and sklearn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, label_ranking_average_precision_score

from soundception.train import metrics


def test_average_precision_hand_computed():
    # ranked: a(rel) b c(rel) d -> precisions 1/1 and 2/3
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    relevant = np.array([1, 0, 1, 0])
    assert metrics.average_precision(scores, relevant) == pytest.approx((1 + 2 / 3) / 2)


def test_single_relevant_is_reciprocal_rank():
    scores = np.array([0.1, 0.5, 0.3, 0.2])
    for rank, item in enumerate(np.argsort(-scores), start=1):
        relevant = np.zeros(4, dtype=bool)
        relevant[item] = True
        assert metrics.average_precision(scores, relevant) == pytest.approx(1 / rank)


def test_ties_are_pessimistic():
    # three classes tied at the top, the relevant one is ranked last among them -> 1/3
    assert metrics.average_precision(np.array([0.3, 0.3, 0.3, 0.1]), np.array([0, 1, 0, 0])) == pytest.approx(1 / 3)
    # the order of classes does not matter
    assert metrics.average_precision(np.array([0.3, 0.3, 0.3, 0.1]), np.array([1, 0, 0, 0])) == pytest.approx(1 / 3)
    # two relevant in a tie of four behind one irrelevant top item: ranks 4 and 5 -> (1/4 + 2/5) / 2
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.5])
    relevant = np.array([0, 1, 0, 1, 0])
    assert metrics.average_precision(scores, relevant) == pytest.approx((1 / 4 + 2 / 5) / 2)
    # a constant predictor gets the worst ranking
    assert metrics.average_precision(np.zeros(5), np.array([1, 0, 0, 0, 0])) == pytest.approx(1 / 5)


def test_missing_species_count_as_not_retrieved():
    # the second relevant species was never predicted: it contributes 0, but still counts
    scores = np.array([0.9, -np.inf, 0.2])
    relevant = np.array([1, 1, 0])
    assert metrics.average_precision(scores, relevant) == pytest.approx(0.5)
    assert metrics.average_precision(np.array([np.nan, 0.4]), np.array([1, 0])) == 0.0
    assert np.isnan(metrics.average_precision(np.array([0.1, 0.2]), np.array([0, 0])))


def test_map_over_queries_and_with_background():
    scores = np.array([[0.7, 0.2, 0.1],    # main 0 at rank 1
                       [0.6, 0.3, 0.1],    # main 1 at rank 2
                       [0.1, 0.2, 0.7]])   # main 0 at rank 3, background 2 at rank 1
    labels = np.array([0, 1, 0])
    result = metrics.report(scores, labels, background=[[], [], [2]])
    assert result["map"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert result["map_background"] == pytest.approx((1 + 1 / 2 + (1 + 2 / 3) / 2) / 3)
    assert result["top1"] == pytest.approx(1 / 3)
    assert result["top5"] == 1.0
    # class 0: recordings ranked by column 0: r0(rel) r1 r2(rel) -> (1 + 2/3) / 2; class 1: r1 at rank 1 of 3
    assert result["class_map"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 1) / 2)
    assert result["chance_map"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_chance_map_is_the_mean_map_of_random_rankings():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=4000)
    result = metrics.report(rng.random((4000, 5)), labels)
    assert result["map"] == pytest.approx(result["chance_map"], abs=0.02)


def test_top_k_ties_pessimistic():
    scores = np.array([[0.5, 0.5, 0.1], [0.2, 0.3, 0.5]])
    assert metrics.top_k_accuracy(scores, np.array([0, 1]), 1) == 0.0
    assert metrics.top_k_accuracy(scores, np.array([0, 1]), 2) == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_without_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.random((30, 7))
    relevant = rng.random((30, 7)) < 0.3
    relevant[np.arange(30), rng.integers(0, 7, 30)] = True
    for row in range(30):
        assert metrics.average_precision(scores[row], relevant[row]) == pytest.approx(
            average_precision_score(relevant[row], scores[row]))
    columns = [c for c in range(7) if relevant[:, c].any()]
    expected = np.mean([average_precision_score(relevant[:, c], scores[:, c]) for c in columns])
    assert metrics.class_wise_map(scores, relevant) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(6))
def test_map_with_one_relevant_species_equals_sklearns_label_ranking_ap(seed):
    rng = np.random.default_rng(seed)
    n_recordings, n_classes = 50, 8
    scores = rng.random((n_recordings, n_classes))
    if seed % 2:
        scores = np.round(scores, 1)  # ties: sklearn ranks them pessimistically too (rank = #{score >= own})
    labels = rng.integers(0, n_classes, n_recordings)
    relevant = metrics.one_hot(labels, n_classes)
    expected = label_ranking_average_precision_score(relevant, scores)
    assert metrics.mean_average_precision(scores, relevant) == pytest.approx(expected, rel=1e-12)
    assert metrics.report(scores, labels)["map"] == pytest.approx(expected, rel=1e-12)


def test_shape_errors():
    with pytest.raises(ValueError):
        metrics.average_precision(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError):
        metrics.top_k_accuracy(np.zeros((2, 3)), np.zeros(2, dtype=int), 0)
