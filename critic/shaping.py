"""Potential-based reward shaping with the critic's value as the potential.

``r_t = r_task + γ·Φ(s_{t+1}) − Φ(s_t)`` with ``Φ(terminal) = 0`` leaves the optimal policy
of ``r_task`` unchanged (Ng, Harada & Russell 1999): along any trajectory the shaping terms
telescope to ``−Φ(s_0)``, a constant of the start state. ``Φ(terminal) = 0`` matters: a
termination is a transition into an absorbing state whose value is 0, so its potential
must be 0 too, or the shaping would pay (or charge) for ending the episode. A time-limit
*truncation* is not a terminal state — the next state's potential is kept and the learner
bootstraps through it as usual.
"""

from __future__ import annotations

import numpy as np


def shaped_reward(
    r_task: np.ndarray | float,
    phi_s: np.ndarray | float,
    phi_next: np.ndarray | float,
    gamma: float,
    terminated: np.ndarray | bool = False,
) -> np.ndarray:
    """``r_task + γ·Φ(s') − Φ(s)``, with ``Φ(s') = 0`` where the transition ``terminated``."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma: expected a discount in [0, 1], got {gamma}")
    phi_next = np.where(
        np.asarray(terminated, dtype=bool), 0.0, np.asarray(phi_next, dtype=np.float64)
    )
    return (
        np.asarray(r_task, dtype=np.float64)
        + gamma * phi_next
        - np.asarray(phi_s, dtype=np.float64)
    ).astype(np.float32)


def shape_episode(
    r_task: np.ndarray,
    phi: np.ndarray,
    gamma: float,
    terminated: bool,
    phi_after_last: float | None = None,
) -> np.ndarray:
    """Shaped rewards ``float32[T]`` of an episode of ``T`` transitions.

    ``phi: float[T]`` is the potential of the state *before* each transition. The state after
    the last one is terminal (potential 0) when ``terminated``; otherwise (truncation) its
    potential ``phi_after_last`` is required.
    """
    r_task = np.asarray(r_task, dtype=np.float64)
    phi = np.asarray(phi, dtype=np.float64)
    if r_task.shape != phi.shape or r_task.ndim != 1:
        raise ValueError(
            f"r_task and phi: expected equal 1-D shapes, got {r_task.shape} and {phi.shape}"
        )
    if terminated:
        last = 0.0
    elif phi_after_last is None:
        raise ValueError("phi_after_last: required for a truncated (not terminated) episode")
    else:
        last = float(phi_after_last)
    phi_next = np.append(phi[1:], last)
    return shaped_reward(r_task, phi, phi_next, gamma)
