"""Value along an episode from pairwise progress: incremental, forward, backward, fused.

With ``c(x, y)`` the critic's progress from frame ``x`` to frame ``y`` and the inverse hop
rule ``Φ_b = Φ_a + c·(1 − Φ_a)`` (``c ≥ 0``), ``Φ_a·(1 + c)`` (``c < 0``):

* incremental: ``Φ_t`` from ``Φ_{t−1}`` and ``c(o_{t−1}, o_t)``, starting at ``Φ_0``;
* forward: ``Φ_t`` from ``Φ_0`` and ``c(o_0, o_t)`` (DESIGN.md's ``c(o_0, o_t)`` when ``Φ_0 = 0``);
* backward: ``Φ_t = 1 + c(o_goal, o_t)`` with ``o_goal`` the goal frame of a *reference*
  demonstration of the same task (averaged over the references given);
* fused: a weighted mean of the available estimates, equal weights by default, optionally
  re-weighted per step by agreement with the others (consistency weighting:
  ``w_k ∝ w_k⁰·exp(−|v_k − median| / τ)``).

``Φ_0`` is 0 unless a goal reference is given, in which case it is the backward estimate of
the first frame: an episode that starts near the goal (e.g. a time-reversed demo) then starts
high instead of being pinned at 0. Every estimate is clipped to ``[0, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from limbic.critic.labels import apply_hop
from limbic.critic.model import ProgressCritic
from limbic.launch.config import require


@dataclass
class ValueConfig:
    """How the value estimates along an episode are fused."""

    weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    """Fusion weights of the incremental, forward and backward estimates."""
    consistency_tau: float = 0.0
    """Temperature of consistency weighting; 0 turns it off (plain weighted mean)."""
    batch_size: int = 256
    """Pairs per critic call when scoring an episode."""

    def __post_init__(self) -> None:
        require(
            len(self.weights) == 3 and min(self.weights) >= 0 and sum(self.weights) > 0,
            "eval.value.weights",
            f"expected 3 non-negative weights, not all 0, got {self.weights}",
        )
        require(
            self.consistency_tau >= 0,
            "eval.value.consistency_tau",
            f"expected >= 0, got {self.consistency_tau}",
        )


def incremental_value(hops: np.ndarray, phi0: float = 0.0) -> np.ndarray:
    """``float32[T]`` from ``T − 1`` consecutive-pair progress values ``c(o_{t−1}, o_t)``."""
    phi = np.empty(len(hops) + 1, dtype=np.float32)
    phi[0] = phi0
    for t, c in enumerate(np.asarray(hops, dtype=np.float64)):
        phi[t + 1] = apply_hop(phi[t], c)
    return np.clip(phi, 0.0, 1.0)


def forward_value(from_first: np.ndarray, phi0: float = 0.0) -> np.ndarray:
    """``float32[T]`` from ``c(o_0, o_t)`` for every ``t`` (``c(o_0, o_0)`` is ignored: ``Φ_0`` is given)."""
    phi = np.clip(apply_hop(phi0, from_first), 0.0, 1.0)
    phi[0] = phi0
    return phi


def backward_value(from_goal: np.ndarray) -> np.ndarray:
    """``float32[T]`` from ``c(o_goal, o_t)``: ``1 + c`` for ``c < 0`` (and 1 for ``c ≥ 0``)."""
    return np.clip(apply_hop(1.0, from_goal), 0.0, 1.0)


DONE_SOURCES = ("head", "reference", "mean")
"""Where a frame's done probability comes from: the done head, the reference done head
(falling back to the done head where an episode has no reference), or their mean."""


def done_probability(curves: ValueCurves, done_from: str) -> np.ndarray:
    """The done probability of ``curves`` from one of :data:`DONE_SOURCES` (the done head's
    where the reference one was not computed)."""
    head = curves.done_prob if curves.done_prob_head is None else curves.done_prob_head
    ref = curves.done_prob_reference
    if done_from == "head" or ref is None:
        return head
    return ref if done_from == "reference" else (head + ref) / 2


def fuse(
    estimates: list[np.ndarray | None], weights: list[float], consistency_tau: float = 0.0
) -> np.ndarray:
    """Weighted mean of the estimates that are present (None entries are skipped)."""
    present = [(e, w) for e, w in zip(estimates, weights, strict=True) if e is not None and w > 0]
    if not present:
        raise ValueError("fuse: no estimate with a positive weight is present")
    values = np.stack([e for e, _ in present]).astype(np.float64)  # [K, T]
    w = np.array([w for _, w in present], dtype=np.float64)[:, None] * np.ones_like(values)
    if consistency_tau > 0 and len(present) > 1:
        w = w * np.exp(-np.abs(values - np.median(values, axis=0, keepdims=True)) / consistency_tau)
    return ((w * values).sum(0) / w.sum(0)).astype(np.float32)


@dataclass
class ValueCurves:
    """Every value estimate along one episode, plus the raw critic outputs behind them."""

    incremental: np.ndarray
    forward: np.ndarray
    backward: np.ndarray | None
    fused: np.ndarray
    hops: np.ndarray
    """``c(o_{t−1}, o_t)``, ``float32[T − 1]``."""
    done_prob: np.ndarray
    """Done probability of every frame, ``float32[T]``, from the source ``done_from`` named."""
    done_prob_head: np.ndarray | None = None
    """The done head's probability (reads the instruction), ``float32[T]``."""
    done_prob_reference: np.ndarray | None = None
    """The reference done head's probability, averaged over the goal references, ``float32[T]``;
    None without references, without the head (``critic.model.reference_done``) or when
    ``done_from`` is ``head`` (it is not computed then)."""


def _batched(fn, n: int, batch_size: int) -> np.ndarray:
    return (
        np.concatenate([fn(slice(i, min(i + batch_size, n))) for i in range(0, n, batch_size)])
        if n
        else np.zeros(0, np.float32)
    )


@torch.no_grad()
def value_curves(
    critic: ProgressCritic,
    tokens: torch.Tensor,
    lang: torch.Tensor,
    goal_tokens: torch.Tensor | None = None,
    config: ValueConfig | None = None,
    view_mask: torch.Tensor | None = None,
    done_from: str = "head",
    done_goal_tokens: torch.Tensor | None = None,
) -> ValueCurves:
    """Score one episode: ``tokens: [T, V, N, C]`` (from ``encode_frames``), ``lang: [lang_dim]``.

    ``goal_tokens: [R, V, N, C]`` are goal frames of ``R`` reference demonstrations; without
    them there is no backward estimate. ``view_mask: bool[T, V]`` marks present views.
    ``done_from`` is one of :data:`DONE_SOURCES`; the reference done head judges the frames
    against ``done_goal_tokens`` (default: ``goal_tokens``), which should show the very goal
    the instruction names (same instruction), as in training.
    """
    if done_from not in DONE_SOURCES:
        raise ValueError(f"done_from: expected one of {DONE_SOURCES}, got {done_from!r}")
    config = config or ValueConfig()
    was_training = critic.training
    critic.eval()
    try:
        t = tokens.shape[0]
        lang_d = critic.embed_lang(lang.reshape(1, -1).to(critic.pos_embed.device))
        z = _embed_all(critic, tokens, lang_d, view_mask, config.batch_size)  # [T, d]

        def pair(z_a: torch.Tensor, z_b: torch.Tensor) -> np.ndarray:
            return _batched(
                lambda s: (
                    critic.pair_head(z_a[s], z_b[s], lang_d.expand(z_b[s].shape[0], -1))
                    .cpu()
                    .numpy()
                ),
                z_b.shape[0],
                config.batch_size,
            )

        hops = pair(z[:-1], z[1:])
        from_first = pair(z[:1].expand(t, -1), z)
        done_prob = torch.sigmoid(critic.done_head(z, lang_d.expand(t, -1))).cpu().numpy()
        backward = None
        done_ref = None
        phi0 = 0.0
        if goal_tokens is not None and goal_tokens.shape[0] > 0:
            zg = _embed_all(critic, goal_tokens, lang_d, None, config.batch_size)
            backward = np.mean(
                [backward_value(pair(zg[r : r + 1].expand(t, -1), z)) for r in range(zg.shape[0])],
                axis=0,
            )
            phi0 = float(backward[0])
        done_goals = goal_tokens if done_goal_tokens is None else done_goal_tokens
        if (
            critic.config.reference_done
            and done_from != "head"
            and done_goals is not None
            and done_goals.shape[0] > 0
        ):
            done_ref = _reference_done(critic, tokens, done_goals, view_mask, config.batch_size)
        incremental = incremental_value(hops, phi0)
        forward = forward_value(from_first, phi0)
        fused = fuse([incremental, forward, backward], config.weights, config.consistency_tau)
        curves = ValueCurves(
            incremental,
            forward,
            backward,
            fused,
            hops.astype(np.float32),
            done_prob.astype(np.float32),
            done_prob.astype(np.float32),
            None if done_ref is None else done_ref.astype(np.float32),
        )
        curves.done_prob = done_probability(curves, done_from).astype(np.float32)
        return curves
    finally:
        critic.train(was_training)


def _chunks(
    tokens: torch.Tensor, view_mask: torch.Tensor | None, batch_size: int, device: torch.device
):
    """``(tokens, view_mask)`` of consecutive frames, ``batch_size`` at a time, on ``device``."""
    for i in range(0, tokens.shape[0], batch_size):
        mask = None if view_mask is None else view_mask[i : i + batch_size].to(device)
        yield tokens[i : i + batch_size].to(device), mask


def _embed_all(
    critic: ProgressCritic,
    tokens: torch.Tensor,
    lang_d: torch.Tensor,
    view_mask: torch.Tensor | None,
    batch_size: int,
) -> torch.Tensor:
    return torch.cat(
        [
            critic.embed_frame(chunk, lang_d.expand(chunk.shape[0], -1), mask)
            for chunk, mask in _chunks(tokens, view_mask, batch_size, critic.pos_embed.device)
        ]
    )


def _reference_done(
    critic: ProgressCritic,
    tokens: torch.Tensor,
    goal_tokens: torch.Tensor,
    view_mask: torch.Tensor | None,
    batch_size: int,
) -> np.ndarray:
    """Reference done probability of every frame, averaged over the goal frames."""
    device = critic.pos_embed.device
    goal_tokens = goal_tokens.to(device)
    z_goal = critic.embed_goal(goal_tokens)
    probs = [
        np.concatenate(
            [
                torch.sigmoid(
                    critic.reference_done_logit(
                        chunk,
                        z_goal[r : r + 1].expand(len(chunk), -1),
                        mask,
                        goal_tokens[r : r + 1].expand(len(chunk), *goal_tokens.shape[1:]),
                    )
                )
                .cpu()
                .numpy()
                for chunk, mask in _chunks(tokens, view_mask, batch_size, device)
            ]
        )
        for r in range(z_goal.shape[0])
    ]
    return np.mean(probs, axis=0)
