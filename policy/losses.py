"""Losses of the actor-critic and of behaviour cloning, as small pure functions.

Notation: ``q`` is an ensemble's ``[E, B]`` values, ``logp`` a ``[B]`` log-probability,
``alpha`` the entropy temperature, ``gamma`` the discount. ``terminal`` is true only when the
task really ended (success); a time-limit cut is not terminal and bootstraps.
"""

from __future__ import annotations

import torch


def td_target(
    reward: torch.Tensor,
    terminal: torch.Tensor,
    next_q: torch.Tensor,
    next_logp: torch.Tensor,
    alpha: float | torch.Tensor,
    gamma: float | torch.Tensor,
) -> torch.Tensor:
    """Soft TD target ``r + gamma * (1 - terminal) * (min_e Q'(s', a') - alpha * log pi(a'|s'))``.

    ``next_q`` is ``[E', B]`` (the sampled subset of target heads); the minimum over it is the
    clipped double-Q / REDQ estimate. ``gamma`` may be per row (``[B]``: ``gamma^n`` for a
    transition that spans ``n`` steps).
    """
    soft_next = next_q.min(dim=0).values - alpha * next_logp
    return reward + gamma * (1.0 - terminal.float()) * soft_next


def critic_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared TD error, summed over the ensemble's heads and averaged over the batch."""
    return ((q - target.detach().unsqueeze(0)) ** 2).mean(dim=1).sum()


def actor_loss(q: torch.Tensor, logp: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """``E[alpha * log pi(a|s) - mean_e Q_e(s, a)]`` with ``a ~ pi``: maximise value and entropy."""
    return (alpha * logp - q.mean(dim=0)).mean()


def temperature_loss(
    log_alpha: torch.Tensor, logp: torch.Tensor, target_entropy: float
) -> torch.Tensor:
    """Tunes ``alpha`` so the policy's entropy tracks ``target_entropy`` (SAC's automatic temperature)."""
    return -(log_alpha * (logp.detach() + target_entropy)).mean()


def bc_loss(
    pred_action: torch.Tensor,
    human_action: torch.Tensor,
    mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Squared error between the policy's deterministic action and the human's, summed over the
    action's components (each times ``weights``, ``[A]``, when given) and averaged over the
    masked rows."""
    sq = (pred_action - human_action) ** 2
    err = (sq * weights if weights is not None else sq).sum(-1)
    if mask is None:
        return err.mean()
    mask = mask.float()
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


@torch.no_grad()
def polyak_update(target: torch.nn.Module, online: torch.nn.Module, tau: float) -> None:
    """``target <- (1 - tau) * target + tau * online``, parameter by parameter."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o, tau)
