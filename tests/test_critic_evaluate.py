"""evaluate_critic on toy episodes: files, per-task metrics, reversed and mismatched scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_episodes import make_episodes

from limbic.critic.evaluate import (
    CriticEvalConfig,
    EpisodeScore,
    compute_metrics,
    evaluate_critic,
    score_episodes,
    summary_line,
)
from limbic.critic.model import CriticModelConfig, ProgressCritic
from limbic.critic.value import ValueCurves
from limbic.launch.config import ConfigError

torch.set_num_threads(1)


def _critic() -> ProgressCritic:
    torch.manual_seed(0)
    cfg = CriticModelConfig(backbone="small_cnn", image_hw=[32, 32], d_model=32, pool_heads=2)
    return ProgressCritic(cfg).eval()


def test_evaluate_writes_metrics_json_and_a_curve_per_episode(tmp_path: Path) -> None:
    episodes = make_episodes(4, seed=0, hw=32, fail_fraction=0.5)
    metrics = evaluate_critic(_critic(), episodes, tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["episodes"] == 4 and saved["successes"] == 2
    assert sorted(saved["per_task"]) == sorted({e.instruction for e in episodes})
    assert [e["episode_index"] for e in saved["per_episode"]] == [0, 1, 2, 3]
    assert len(list((tmp_path / "curves").glob("*.png"))) == 4
    # two datasets number their episodes from 0 alike: every episode still gets its own curve
    twice = evaluate_critic(_critic(), episodes + episodes, tmp_path / "twice")
    assert [e["position"] for e in twice["per_episode"]] == list(range(8))
    assert len(list((tmp_path / "twice" / "curves").glob("*.png"))) == 8
    line = summary_line(metrics)
    assert [kv.split("=")[0] for kv in line.split()] == [
        "voc",
        "voc_f1",
        "done_f1",
        "mismatch",
        "cls_acc",
    ]


def test_the_recordings_own_true_progress_is_scored_as_a_reference(tmp_path: Path) -> None:
    """Where every episode stores its true progress, the metrics also score it as if it were the
    value (what a critic predicting it exactly would get); where some do not, NaN."""
    episodes = make_episodes(4, seed=0, hw=32, fail_fraction=0.5)
    config = CriticEvalConfig(plots=False)
    partial = evaluate_critic(_critic(), episodes, tmp_path / "a", config=config)
    assert np.isnan(partial["voc_true_progress"])  # the successes store none here
    for e in episodes:
        if e.succeeded:  # time-based, as a successful recording of a steady expert would be
            e.metadata["progress"] = np.linspace(0, 1, len(e), dtype=np.float32)
    full = evaluate_critic(_critic(), episodes, tmp_path / "b", config=config)
    assert full["voc_true_progress"] == 1.0
    assert full["cls_acc_true_progress"] == 1.0  # successes end at 1, the failures far short


def test_scores_cover_every_frame_reversal_and_wrong_instruction() -> None:
    episodes = make_episodes(4, seed=1, hw=32)
    config = CriticEvalConfig(goal_references=2, mismatch_pairs=6, plots=False)
    scores = score_episodes(_critic(), episodes, config=config)
    for ep, s in zip(episodes, scores, strict=True):
        n = len(ep)
        assert s.curves.fused.shape == s.reversed_fused.shape == s.curves.done_prob.shape == (n,)
        assert s.curves.hops.shape == (n - 1,)
        assert s.curves.backward is not None  # another success of the same task exists
        assert s.mismatch_progress.shape == (6,)
        assert np.all((s.curves.fused >= 0) & (s.curves.fused <= 1))
    # a lone episode has no reference goal (its own goal is never used) and no wrong instruction
    (alone,) = score_episodes(_critic(), episodes[:1], config=config)
    assert alone.curves.backward is None and alone.mismatch_progress.size == 0


def test_a_new_phrasing_borrows_goal_references_of_its_task_when_asked() -> None:
    """An instruction no reference shares gets no backward value under
    ``reference_match=instruction``; under ``task`` (the default) it takes the goals of other
    successes of the same task, never one of another task."""
    episodes = make_episodes(4, seed=1, hw=32)
    for e in episodes:
        e.metadata["task"] = "push"
    episodes[0].instruction = "shove it over there"  # a phrasing no other episode has
    plain = CriticEvalConfig(goal_references=2, plots=False, reference_match="instruction")
    (lone, *_) = score_episodes(_critic(), episodes, config=plain)
    assert lone.curves.backward is None
    by_task = CriticEvalConfig(goal_references=2, plots=False)
    (borrowed, *_) = score_episodes(_critic(), episodes, config=by_task)
    assert borrowed.curves.backward is not None and borrowed.curves.backward.shape == (
        len(episodes[0]),
    )
    for e in episodes[1:]:
        e.metadata["task"] = "stack"
    (other_task, *_) = score_episodes(_critic(), episodes, config=by_task)
    assert other_task.curves.backward is None
    with pytest.raises(ConfigError, match="eval.reference_match"):
        CriticEvalConfig(reference_match="colour")


def _settle(episode, first_success_step: int) -> None:
    """Flag success from ``first_success_step`` on, as the recorder's settle steps do."""
    episode.success[:] = False
    episode.success[first_success_step:] = True


def test_voc_and_vroc_cover_the_task_up_to_its_finished_frame() -> None:
    """Frames after the task is finished show it unchanged: VOC is taken over the frames up to
    the first one that shows it finished, and the reversal runs over those frames alone; the
    whole recording's VOC is ``voc_episode``."""
    episodes = make_episodes(2, seed=1, hw=32)
    n = len(episodes[0])
    _settle(episodes[0], n // 2 - 1)  # finished on frame n // 2, then settling
    end = n // 2
    scores = score_episodes(_critic(), episodes, config=CriticEvalConfig(plots=False))
    assert scores[0].end == end and scores[0].reversed_fused.shape == (end + 1,)
    assert scores[1].end == len(episodes[1]) - 1  # ends on its successful step: the whole episode
    whole = score_episodes(
        _critic(), episodes, config=CriticEvalConfig(plots=False, finish_at_success=False)
    )
    assert whole[0].end == n - 1 and whole[0].reversed_fused.shape == (n,)

    # A value that rises to the finished frame, then wobbles on the finished task.
    rising = np.linspace(0, 1, end + 1)
    plateau = 1.0 - 0.05 * (np.arange(n - end - 1) % 2)
    fused = np.concatenate([rising, plateau]).astype(np.float32)
    curves = ValueCurves(fused, fused, None, fused, np.diff(fused), np.zeros(n, np.float32))
    score = EpisodeScore(curves, rising[::-1].astype(np.float32), end, np.zeros(0, np.float32))
    metrics = compute_metrics(episodes[:1], [score])
    assert metrics["voc"] == pytest.approx(1.0) and metrics["vroc"] == pytest.approx(-1.0)
    assert metrics["voc_episode"] < 0.95


def test_precomputed_frame_tokens_score_the_same_as_encoding_each_episode(tmp_path: Path) -> None:
    from limbic.critic.features import FrameTokens

    episodes = make_episodes(4, seed=2, hw=32, fail_fraction=0.5)
    critic = _critic()
    config = CriticEvalConfig(plots=False)
    direct = evaluate_critic(critic, episodes, tmp_path / "a", config=config)
    tokens = FrameTokens(critic, episodes)
    given = evaluate_critic(critic, episodes, tmp_path / "b", config=config, tokens=tokens)
    for key in ("voc", "vroc", "done_f1", "mismatch", "cls_acc"):
        assert given[key] == pytest.approx(direct[key], abs=1e-5), key
