"""Evaluate a progress critic on held-out episodes: metrics JSON, value-curve PNGs, one summary line.

Every episode is scored with :func:`limbic.critic.value.value_curves` forwards and time-
reversed; the backward estimate uses the goal frames of up to ``goal_references`` *other*
successful episodes of the same instruction (from ``references`` when given, else from the
evaluated set itself, leaving the scored episode out). Metric definitions are in
:mod:`limbic.critic.metrics`; the goals of the critic issue are VOC ≥ 0.95, VOC-F1 ≥ 0.90,
done F1 ≥ 0.95, mismatch ≤ 0.05 and classification accuracy ≥ 0.95 on every task.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from limbic.critic import metrics as critic_metrics
from limbic.critic.features import FrameTokens, episode_images, episode_tokens
from limbic.critic.labels import (
    PROGRESS_KEY,
    done_labels,
    episode_progress,
    other_task_instructions,
    task_end,
    task_of,
)
from limbic.critic.model import ProgressCritic
from limbic.critic.value import DONE_SOURCES, ValueConfig, ValueCurves, value_curves
from limbic.data.schema import EpisodeArrays
from limbic.launch.config import require


@dataclass
class CriticEvalConfig:
    """How held-out episodes are scored."""

    value: ValueConfig = field(default_factory=ValueConfig)
    """Value fusion settings."""
    goal_references: int = 3
    """Reference goal frames (other successful episodes, same instruction) for the backward value."""
    reference_match: str = "task"
    """Which references an episode's backward value may use: ``instruction`` (successes of the
    same instruction only) or ``task`` (those, else successes of the same task under another
    phrasing or colour, so a held-out instruction gets a backward value too; critic/README.md)."""
    mismatch_pairs: int = 8
    """Pairs per episode scored under a wrong instruction."""
    finish_at_success: bool = True
    """Score the task up to the first frame that shows it finished (``labels.finished_frame``):
    VOC and VROC over the frames up to it (a recorder's settle frames after it show a finished
    task that time does not advance), done labels from it on. False: over the whole recording,
    done labels from 95 % of it. ``voc_episode`` in the metrics is always the whole recording's."""
    done_threshold: float | None = None
    """Done probability from which a frame counts as done; None: the critic's own, calibrated
    on validation episodes when it was trained (0.5 for a critic that never was)."""
    done_from: str = "head"
    """Where the done probability comes from: ``head`` (the done head, which reads the
    instruction), ``reference`` (the reference done head, ``critic.model.reference_done``,
    averaged over the episode's goal references; the done head where it has none) or ``mean``
    (of the two)."""
    plots: bool = True
    """Write a value-curve PNG per episode."""

    def __post_init__(self) -> None:
        require(
            self.goal_references >= 0,
            "eval.goal_references",
            f"expected >= 0, got {self.goal_references}",
        )
        require(
            self.reference_match in ("instruction", "task"),
            "eval.reference_match",
            f"expected instruction or task, got {self.reference_match!r}",
        )
        require(
            self.mismatch_pairs >= 2,
            "eval.mismatch_pairs",
            f"expected >= 2, got {self.mismatch_pairs}",
        )
        require(
            self.done_from in DONE_SOURCES,
            "eval.done_from",
            f"expected one of {list(DONE_SOURCES)}, got {self.done_from!r}",
        )
        require(
            self.done_threshold is None or 0 < self.done_threshold < 1,
            "eval.done_threshold",
            f"expected (0, 1), got {self.done_threshold}",
        )


@dataclass
class EpisodeScore:
    """What the critic says about one episode."""

    curves: ValueCurves
    reversed_fused: np.ndarray
    """Fused value along the time-reversed task: frames ``end, end − 1, …, 0``."""
    end: int
    """The task's last frame (``labels.task_end``): VOC and VROC are taken over ``0 … end``."""
    mismatch_progress: np.ndarray
    """Progress on ``mismatch_pairs`` pairs under another task's instruction (empty with one task)."""


class GoalReferences:
    """Goal frames of reference demonstrations, encoded once per reference episode."""

    def __init__(
        self, critic: ProgressCritic, pool: list[EpisodeArrays], k: int, match: str = "instruction"
    ):
        self.critic, self.pool, self.k, self.match = critic, pool, k, match
        self._tokens: dict[int, torch.Tensor] = {}

    def candidates(self, episode: EpisodeArrays) -> list[EpisodeArrays]:
        """Other successes of the episode's instruction; with ``match="task"``, where there are
        none, other successes of its task."""
        others = [r for r in self.pool if r is not episode and r.succeeded]
        refs = [r for r in others if r.instruction == episode.instruction]
        if not refs and self.match == "task":
            refs = [r for r in others if task_of(r) == task_of(episode)]
        return refs

    @torch.no_grad()
    def for_episode(self, episode: EpisodeArrays) -> torch.Tensor | None:
        """Tokens ``[R, V, N, C]`` of up to ``k`` goal frames of :meth:`candidates`."""
        refs = self.candidates(episode)
        if self.k == 0 or not refs:
            return None
        picks = np.linspace(0, len(refs) - 1, min(self.k, len(refs))).round().astype(int)
        out = []
        for r in (refs[int(i)] for i in picks):
            if id(r) not in self._tokens:
                last = {v: frames[-1:] for v, frames in r.images.items()}
                one = EpisodeArrays(
                    r.episode_index,
                    r.instruction,
                    last,
                    r.state[-1:],
                    r.action[-1:],
                    r.reward[-1:],
                    r.success[-1:],
                    r.done[-1:],
                    r.intervention[-1:],
                )
                self._tokens[id(r)] = self.critic.encode_frames(
                    episode_images(self.critic, one)[0]
                ).cpu()
            out.append(self._tokens[id(r)])
        return torch.cat(out)


@torch.no_grad()
def score_episodes(
    critic: ProgressCritic,
    episodes: list[EpisodeArrays],
    tokens: FrameTokens | None = None,
    references: list[EpisodeArrays] | None = None,
    config: CriticEvalConfig | None = None,
) -> list[EpisodeScore]:
    """Score every episode; ``tokens`` may hold their precomputed frame tokens (else one
    episode is encoded at a time)."""
    config = config or CriticEvalConfig()
    require(
        config.done_from == "head" or critic.config.reference_done,
        "eval.done_from",
        f"{config.done_from!r} needs a critic trained with critic.model.reference_done=true",
    )
    pool = references if references is not None else episodes
    goals = GoalReferences(critic, pool, config.goal_references, config.reference_match)
    # the reference done head compares with the goal the instruction names: same instruction only
    done_goals = (
        GoalReferences(critic, pool, config.goal_references, "instruction")
        if config.done_from != "head"
        else None
    )
    instructions = sorted({e.instruction for e in episodes} | {e.instruction for e in pool})
    others = other_task_instructions([*episodes, *pool])
    lang_all = critic.encode_instructions(instructions)
    scores = []
    for i, ep in enumerate(episodes):
        toks, present = tokens.episode(i) if tokens is not None else episode_tokens(critic, ep)
        lang = lang_all[instructions.index(ep.instruction)]
        goal = goals.for_episode(ep)
        done_goal = done_goals.for_episode(ep) if done_goals is not None else None
        if done_goal is None:  # no success of its instruction: the done head alone
            done_goal = torch.zeros((0, *toks.shape[1:]))
        curves = value_curves(
            critic, toks, lang, goal, config.value, present, config.done_from, done_goal
        )
        end = task_end(ep, config.finish_at_success)
        span = slice(0, end + 1)
        rev = value_curves(
            critic, toks[span].flip(0), lang, goal, config.value, present[span].flip(0)
        )
        mism = np.zeros(0, dtype=np.float32)
        if others[ep.instruction]:  # another task's instruction, a different one per episode
            wrong_text = others[ep.instruction][i % len(others[ep.instruction])]
            wrong = lang_all[instructions.index(wrong_text)]
            a = np.linspace(0, len(ep) - 1, config.mismatch_pairs).round().astype(int)
            b = a[::-1].copy()
            lang_d = critic.embed_lang(wrong.reshape(1, -1).expand(len(a), -1))
            z_a = critic.embed_frame(
                toks[a].to(lang_d.device), lang_d, present[a].to(lang_d.device)
            )
            z_b = critic.embed_frame(
                toks[b].to(lang_d.device), lang_d, present[b].to(lang_d.device)
            )
            mism = critic.pair_head(z_a, z_b, lang_d).cpu().numpy()
        scores.append(EpisodeScore(curves, rev.fused, end, mism))
    return scores


def compute_metrics(
    episodes: list[EpisodeArrays],
    scores: list[EpisodeScore],
    done_threshold: float = 0.5,
    finish_at_success: bool = True,
) -> dict[str, float]:
    """All metrics of :mod:`limbic.critic.metrics` over the given episodes (VOC and VROC over
    each success's task frames ``0 … end``; ``finish_at_success``: see :class:`CriticEvalConfig`)."""
    succ = [s for e, s in zip(episodes, scores, strict=True) if e.succeeded]
    voc = critic_metrics.value_order_correlation([s.curves.fused[: s.end + 1] for s in succ])
    vroc = critic_metrics.value_order_correlation([s.reversed_fused for s in succ])
    labels = [done_labels(e, finish_at_success=finish_at_success) for e in episodes]
    precision, recall, f1 = critic_metrics.done_precision_recall_f1(
        np.concatenate([s.curves.done_prob for s in scores]),
        np.concatenate([lab for lab, _ in labels]),
        np.concatenate([m for _, m in labels]),
        done_threshold,
    )
    out = {
        "voc": voc,
        "vroc": vroc,
        "voc_f1": critic_metrics.voc_f1(voc, vroc) if succ else float("nan"),
        "voc_episode": critic_metrics.value_order_correlation([s.curves.fused for s in succ]),
        "voc_incremental": critic_metrics.value_order_correlation(
            [s.curves.incremental[: s.end + 1] for s in succ]
        ),
        "voc_forward": critic_metrics.value_order_correlation(
            [s.curves.forward[: s.end + 1] for s in succ]
        ),
        "voc_backward": critic_metrics.value_order_correlation(
            [s.curves.backward[: s.end + 1] for s in succ if s.curves.backward is not None]
        ),
        "negative_rate": critic_metrics.negative_rate([s.curves.hops for s in succ]),
        "mismatch": critic_metrics.mismatch_score(
            np.concatenate([s.mismatch_progress for s in scores])
        ),
        "done_precision": precision,
        "done_recall": recall,
        "done_f1": f1,
        "cls_acc": critic_metrics.classification_accuracy(
            [s.curves.fused for s in scores], [e.succeeded for e in episodes]
        ),
        "episodes": float(len(episodes)),
        "successes": float(len(succ)),
    }
    # The recording's own true progress (``task_progress``), scored as if it were the value: what
    # a critic that predicted it exactly would get (NaN where episodes do not store it).
    stored = [e.metadata.get(PROGRESS_KEY) for e in episodes]
    if all(p is not None for p in stored):
        out["voc_true_progress"] = critic_metrics.value_order_correlation(
            [
                np.asarray(p)[: s.end + 1]
                for e, s, p in zip(episodes, scores, stored, strict=True)
                if e.succeeded
            ]
        )
        out["cls_acc_true_progress"] = critic_metrics.classification_accuracy(
            [np.asarray(p) for p in stored], [e.succeeded for e in episodes]
        )
    else:
        out["voc_true_progress"] = out["cls_acc_true_progress"] = float("nan")
    return out


def summary_line(metrics: dict[str, Any]) -> str:
    """The one-line summary the eval entry point ends with."""
    keys = ("voc", "voc_f1", "done_f1", "mismatch", "cls_acc")
    return " ".join(f"{k}={metrics[k]:.4f}" for k in keys)


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, float | np.floating):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer | np.bool_):
        return x.item()
    return x


def plot_episode(path: Path, episode: EpisodeArrays, score: EpisodeScore) -> None:
    """Value-curve PNG: fused and component values, true progress, done probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = score.curves
    t = np.arange(len(episode))
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    phi = episode_progress(episode)
    if phi is not None:
        ax.plot(t, phi, "k--", lw=1.5, label="true progress")
    ax.plot(t, c.fused, lw=2.5, color="C0", label="fused value")
    ax.plot(t, c.incremental, lw=1, color="C1", alpha=0.8, label="incremental")
    ax.plot(t, c.forward, lw=1, color="C2", alpha=0.8, label="forward")
    if c.backward is not None:
        ax.plot(t, c.backward, lw=1, color="C3", alpha=0.8, label="backward")
    ax.plot(t, c.done_prob, ":", lw=1.5, color="C4", label="done prob")
    outcome = "success" if episode.succeeded else "failure"
    voc = critic_metrics.spearman(c.fused[: score.end + 1], t[: score.end + 1])
    if score.end < len(episode) - 1:
        ax.axvline(score.end, color="0.6", lw=1, ls="-.", label="task finished")
    ax.set_title(
        f"ep {episode.episode_index} ({outcome}) VOC={voc:.2f}\n{episode.instruction}", fontsize=9
    )
    ax.set_xlabel("step")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def evaluate_critic(
    critic: ProgressCritic,
    episodes: list[EpisodeArrays],
    out_dir: str | Path,
    references: list[EpisodeArrays] | None = None,
    config: CriticEvalConfig | None = None,
    tokens: FrameTokens | None = None,
) -> dict[str, Any]:
    """Score ``episodes`` (``tokens``: their precomputed frame tokens, if any), write ``metrics.json`` and ``curves/*_episode_*.png`` under ``out_dir``; return the metrics.

    The returned dict has the overall metrics at the top level, ``per_task`` (metrics per
    instruction) and ``per_episode`` (its place in ``episodes``, outcome, VOC, final value,
    predicted success); the curve of the episode at place ``i`` is ``curves/{i:04d}_episode_{index:06d}.png``.
    """
    if not episodes:
        raise ValueError("episodes: expected at least one episode to evaluate")
    config = config or CriticEvalConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores = score_episodes(critic, episodes, tokens, references=references, config=config)
    threshold = (
        critic.done_thresholds.get(config.done_from, critic.done_threshold)
        if config.done_threshold is None
        else config.done_threshold
    )
    result: dict[str, Any] = compute_metrics(episodes, scores, threshold, config.finish_at_success)
    result["done_threshold"] = threshold
    result["done_from"] = config.done_from
    result["per_task"] = {
        task: compute_metrics(
            *zip(
                *[(e, s) for e, s in zip(episodes, scores, strict=True) if e.instruction == task],
                strict=True,
            ),
            threshold,
            config.finish_at_success,
        )  # type: ignore[arg-type]
        for task in sorted({e.instruction for e in episodes})
    }
    result["per_episode"] = [
        {
            "position": i,
            "episode_index": e.episode_index,
            "instruction": e.instruction,
            "succeeded": e.succeeded,
            "voc": critic_metrics.spearman(s.curves.fused[: s.end + 1], np.arange(s.end + 1)),
            "final_value": float(s.curves.fused[-1]),
            "predicted_success": critic_metrics.predict_success(s.curves.fused),
        }
        for i, (e, s) in enumerate(zip(episodes, scores, strict=True))
    ]
    if config.plots:
        # named by the episode's place in the evaluated list as well: episodes from several
        # datasets share indices, and one curve must not overwrite another
        (out / "curves").mkdir(exist_ok=True)
        for i, (e, s) in enumerate(zip(episodes, scores, strict=True)):
            plot_episode(out / "curves" / f"{i:04d}_episode_{e.episode_index:06d}.png", e, s)
    (out / "metrics.json").write_text(json.dumps(_json_safe(result), indent=2))
    return result
