"""Progress-critic metrics, each a pure function of value curves and critic outputs.

Definitions (after VLAC and Robo-Dopamine; ``V_t`` is the fused value of frame ``t``):

* **VOC** (value-order correlation): Spearman's rank correlation between ``V_t`` and ``t``
  on a *successful* episode, averaged over episodes. 1 = value rises monotonically.
* **VROC**: the same on the time-reversed episode (the critic re-run on frames in reverse
  order, correlated with the reversed time index). A critic that reads the task rather than
  the clock gives ≈ −1; one that predicts elapsed time gives +1.
* **VOC-F1**: harmonic mean of ``p = (1 + VOC) / 2`` (ordering of true progress) and
  ``r = (1 − VROC) / 2`` (rejection of reversed progress), both in ``[0, 1]``. It is high only
  if the value both rises on real progress and falls on its reversal.
* **negative rate**: share of consecutive pairs ``c(o_{t−1}, o_t) < 0`` on successful
  episodes (the critic claiming regress on an expert demo).
* **mismatch**: mean ``|c|`` over pairs scored under a wrong instruction (another task's).
* **done precision / recall / F1**: frame-level, ``done_prob ≥ threshold`` against the done
  labels of :func:`limbic.critic.labels.done_labels` (unlabelled frames excluded).
* **classification accuracy**: an episode is called a success when its final value exceeds
  0.8 and the mean value of its last third exceeds 0.6; accuracy against the true outcome.

Spearman's correlation of a constant sequence is undefined; it is taken as 0 here (no order).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks starting at 1, ties given their average rank (as ``scipy.stats.rankdata``)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation; 0 when either sequence is constant or shorter than 2."""
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(
            f"spearman: expected two 1-D arrays of equal length, got {x.shape} and {y.shape}"
        )
    if len(x) < 2:
        return 0.0
    rx, ry = rankdata(x), rankdata(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = np.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else 0.0


def value_order_correlation(values: Sequence[np.ndarray]) -> float:
    """VOC: mean over episodes of Spearman(``V_t``, ``t``); NaN when there are no episodes."""
    if not values:
        return float("nan")
    return float(np.mean([spearman(v, np.arange(len(v))) for v in values]))


def voc_f1(voc: float, vroc: float) -> float:
    """Harmonic mean of ``(1 + VOC) / 2`` and ``(1 − VROC) / 2``."""
    p, r = (1.0 + voc) / 2.0, (1.0 - vroc) / 2.0
    return float(2 * p * r / (p + r)) if p + r > 0 else 0.0


def negative_rate(hops: Sequence[np.ndarray]) -> float:
    """Share of consecutive-pair progress values below 0, over all given episodes."""
    flat = (
        np.concatenate([np.asarray(h, dtype=np.float64).ravel() for h in hops])
        if hops
        else np.zeros(0)
    )
    return float((flat < 0).mean()) if flat.size else float("nan")


def mismatch_score(progress_wrong_instruction: np.ndarray) -> float:
    """Mean ``|c|`` of progress values predicted under a wrong instruction."""
    p = np.asarray(progress_wrong_instruction, dtype=np.float64)
    return float(np.abs(p).mean()) if p.size else float("nan")


def done_precision_recall_f1(
    done_prob: np.ndarray, labels: np.ndarray, labelled: np.ndarray, threshold: float = 0.5
) -> tuple[float, float, float]:
    """Frame-level ``(precision, recall, F1)`` of ``done_prob ≥ threshold`` on labelled frames.

    Precision is 1 when nothing is predicted done, recall 1 when nothing is done (no
    evidence against either); F1 is their harmonic mean.
    """
    labelled = np.asarray(labelled, dtype=bool)
    pred = np.asarray(done_prob)[labelled] >= threshold
    true = np.asarray(labels)[labelled] >= 0.5
    tp = float((pred & true).sum())
    precision = tp / pred.sum() if pred.sum() else 1.0
    recall = tp / true.sum() if true.sum() else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return float(precision), float(recall), float(f1)


def best_done_threshold(
    done_prob: np.ndarray,
    labels: np.ndarray,
    labelled: np.ndarray,
    candidates: np.ndarray | None = None,
) -> tuple[float, float]:
    """The threshold of ``candidates`` (default 0.05, 0.06, … 0.95) with the best done F1, and that F1.

    Ties go to the candidate nearest 0.5. Calibrate on validation episodes, never on the
    episodes the threshold is then reported on.
    """
    grid = np.round(np.linspace(0.05, 0.95, 91), 2) if candidates is None else candidates
    f1s = np.array(
        [done_precision_recall_f1(done_prob, labels, labelled, float(t))[2] for t in grid]
    )
    best = np.flatnonzero(f1s >= f1s.max() - 1e-12)
    pick = best[np.argmin(np.abs(grid[best] - 0.5))]
    return float(grid[pick]), float(f1s[pick])


def predict_success(
    value: np.ndarray, final_threshold: float = 0.8, tail_threshold: float = 0.6
) -> bool:
    """Success if the final value exceeds ``final_threshold`` and the last third's mean exceeds ``tail_threshold``."""
    value = np.asarray(value, dtype=np.float64)
    if value.size == 0:
        raise ValueError("value: expected a non-empty value curve")
    tail = value[len(value) - max(len(value) // 3, 1) :]
    return bool(value[-1] > final_threshold and tail.mean() > tail_threshold)


def classification_accuracy(values: Sequence[np.ndarray], succeeded: Sequence[bool]) -> float:
    """Share of episodes whose :func:`predict_success` matches the true outcome."""
    if len(values) != len(succeeded):
        raise ValueError(
            f"values and succeeded: {len(values)} curves but {len(succeeded)} outcomes"
        )
    if not values:
        return float("nan")
    return float(
        np.mean([predict_success(v) == bool(s) for v, s in zip(values, succeeded, strict=True)])
    )
