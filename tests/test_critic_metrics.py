"""Critic metrics on hand-made value curves."""

from __future__ import annotations

import numpy as np
import pytest

from limbic.critic import metrics as critic_metrics


def test_rankdata_and_spearman_match_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 5, size=12).astype(float)
        y = rng.normal(size=12)
        np.testing.assert_allclose(critic_metrics.rankdata(x), stats.rankdata(x))
        assert critic_metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_spearman_edge_cases() -> None:
    assert critic_metrics.spearman(np.ones(5), np.arange(5)) == 0.0  # constant: no order
    assert critic_metrics.spearman(np.array([1.0]), np.array([2.0])) == 0.0
    with pytest.raises(ValueError, match="equal length"):
        critic_metrics.spearman(np.zeros(3), np.zeros(4))


def test_voc_on_hand_made_curves() -> None:
    rising = np.array([0.0, 0.1, 0.3, 0.2, 0.8, 1.0])  # one swap of adjacent ranks
    assert critic_metrics.value_order_correlation([rising]) == pytest.approx(1 - 6 * 2 / (6 * 35))
    assert critic_metrics.value_order_correlation(
        [np.linspace(0, 1, 7), np.linspace(1, 0, 7)]
    ) == pytest.approx(0.0)
    assert np.isnan(critic_metrics.value_order_correlation([]))


def test_voc_f1() -> None:
    assert critic_metrics.voc_f1(1.0, -1.0) == pytest.approx(1.0)
    assert critic_metrics.voc_f1(1.0, 1.0) == pytest.approx(0.0)  # a clock, not a critic
    assert critic_metrics.voc_f1(0.9, -0.8) == pytest.approx(2 * 0.95 * 0.9 / (0.95 + 0.9))
    assert critic_metrics.voc_f1(-1.0, 1.0) == 0.0


def test_negative_rate_and_mismatch() -> None:
    assert critic_metrics.negative_rate(
        [np.array([0.1, -0.2, 0.3]), np.array([-0.1])]
    ) == pytest.approx(0.5)
    assert critic_metrics.negative_rate([np.array([0.0, 0.2])]) == 0.0
    assert critic_metrics.mismatch_score(np.array([0.1, -0.3])) == pytest.approx(0.2)


def test_done_precision_recall_f1() -> None:
    prob = np.array([0.1, 0.7, 0.9, 0.2, 0.6, 0.9])
    labels = np.array([0, 0, 1, 1, 0, 1])
    labelled = np.array([True, True, True, True, False, True])  # frame 4 is unlabelled
    precision, recall, f1 = critic_metrics.done_precision_recall_f1(prob, labels, labelled)
    assert (
        precision == pytest.approx(2 / 3)
        and recall == pytest.approx(2 / 3)
        and f1 == pytest.approx(2 / 3)
    )
    assert critic_metrics.done_precision_recall_f1(np.zeros(3), np.zeros(3), np.ones(3, bool)) == (
        1.0,
        1.0,
        1.0,
    )


def test_success_classification_rule() -> None:
    assert critic_metrics.predict_success(
        np.array([0.0, 0.2, 0.4, 0.6, 0.7, 0.9])
    )  # final 0.9, last third 0.8
    assert not critic_metrics.predict_success(
        np.array([0.0, 0.1, 0.1, 0.2, 0.1, 0.9])
    )  # a spike at the end
    assert not critic_metrics.predict_success(
        np.array([0.0, 0.4, 0.7, 0.8, 0.8, 0.75])
    )  # never above 0.8 at the end
    curves = [
        np.array([0.0, 0.5, 0.9, 0.95]),
        np.array([0.0, 0.3, 0.2, 0.1]),
        np.array([0.0, 0.5, 0.9, 0.95]),
    ]
    assert critic_metrics.classification_accuracy(curves, [True, False, False]) == pytest.approx(
        2 / 3
    )
    with pytest.raises(ValueError, match="outcomes"):
        critic_metrics.classification_accuracy(curves, [True])
