"""Value along an episode (incremental / forward / backward / fused) and potential-based shaping."""

from __future__ import annotations

import numpy as np
import pytest

from limbic.critic.labels import hop_progress
from limbic.critic.shaping import shape_episode, shaped_reward
from limbic.critic.value import backward_value, forward_value, fuse, incremental_value

# ----- value estimates ----------------------------------------------------------------------


def test_incremental_value_hand_computed() -> None:
    np.testing.assert_allclose(incremental_value(np.array([0.5, 0.5])), [0.0, 0.5, 0.75])
    # From 0.8, a hop of -0.5 halves the value; then +1 reaches the goal.
    np.testing.assert_allclose(incremental_value(np.array([-0.5, 1.0]), phi0=0.8), [0.8, 0.4, 1.0])


def test_forward_and_backward_hand_computed() -> None:
    np.testing.assert_allclose(
        forward_value(np.array([0.0, 0.25, 1.0]), phi0=0.0), [0.0, 0.25, 1.0]
    )
    np.testing.assert_allclose(forward_value(np.array([0.0, 0.5]), phi0=0.5), [0.5, 0.75])
    np.testing.assert_allclose(
        backward_value(np.array([-1.0, -0.25, 0.0, 0.3])), [0.0, 0.75, 1.0, 1.0]
    )


def test_perfect_critic_recovers_progress_from_every_perspective() -> None:
    phi = np.array([0.0, 0.1, 0.35, 0.3, 0.6, 0.9, 1.0])  # with one setback
    hops = hop_progress(phi[:-1], phi[1:])
    np.testing.assert_allclose(incremental_value(hops), phi, atol=1e-6)
    np.testing.assert_allclose(forward_value(hop_progress(phi[0], phi)), phi, atol=1e-6)
    np.testing.assert_allclose(backward_value(hop_progress(1.0, phi)), phi, atol=1e-6)


def test_fuse_equal_weights_skips_missing_and_consistency_downweights_outlier() -> None:
    a, b, c = np.array([0.2, 0.4]), np.array([0.4, 0.6]), np.array([0.3, 0.5])
    np.testing.assert_allclose(fuse([a, b, c], [1, 1, 1]), [0.3, 0.5], atol=1e-6)
    np.testing.assert_allclose(fuse([a, b, None], [1, 1, 1]), [0.3, 0.5], atol=1e-6)
    outlier = np.array([1.0, 1.0])
    plain = fuse([a, c, outlier], [1, 1, 1])
    weighted = fuse([a, c, outlier], [1, 1, 1], consistency_tau=0.05)
    assert np.all(
        np.abs(weighted - 0.25 - np.array([0, 0.2])) < np.abs(plain - 0.25 - np.array([0, 0.2]))
    )
    with pytest.raises(ValueError, match="no estimate"):
        fuse([None, None, None], [1, 1, 1])


# ----- shaping --------------------------------------------------------------------------------


def test_shaped_reward_zeroes_terminal_potential() -> None:
    r = shaped_reward(
        np.array([0.0, 1.0]),
        np.array([0.2, 0.7]),
        np.array([0.7, 0.9]),
        0.9,
        np.array([False, True]),
    )
    np.testing.assert_allclose(r, [0.9 * 0.7 - 0.2, 1.0 - 0.7], atol=1e-6)
    np.testing.assert_allclose(
        shape_episode(np.array([0.0, 1.0]), np.array([0.2, 0.7]), 0.9, terminated=True),
        r,
        atol=1e-6,
    )
    trunc = shape_episode(
        np.array([0.0, 0.0]), np.array([0.2, 0.7]), 0.9, terminated=False, phi_after_last=0.8
    )
    np.testing.assert_allclose(trunc, [0.9 * 0.7 - 0.2, 0.9 * 0.8 - 0.7], atol=1e-6)
    with pytest.raises(ValueError, match="phi_after_last"):
        shape_episode(np.zeros(2), np.zeros(2), 0.9, terminated=False)
    with pytest.raises(ValueError, match="gamma"):
        shaped_reward(0.0, 0.0, 0.0, 1.5)


def _random_mdp(seed: int, n_states: int = 6, n_actions: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Transitions ``P[s, a, s']`` over ``n_states`` + 1 states (the last is terminal) and rewards ``R[s, a, s']``."""
    rng = np.random.default_rng(seed)
    p = rng.random((n_states, n_actions, n_states + 1)) ** 3  # sparse-ish
    p[:, :, -1] += 0.05  # every action may end the episode
    p /= p.sum(-1, keepdims=True)
    r = rng.normal(size=(n_states, n_actions, n_states + 1))
    return p, r


def _solve(p: np.ndarray, r: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact optimal ``(policy, Q)`` by policy iteration; the terminal state has value 0."""
    n, m, _ = p.shape
    expected_r = (p * r).sum(-1)  # [n, m]
    p_live = p[:, :, :n]  # transitions between non-terminal states
    policy = np.zeros(n, dtype=int)
    for _ in range(1000):
        v = np.linalg.solve(
            np.eye(n) - gamma * p_live[np.arange(n), policy], expected_r[np.arange(n), policy]
        )
        q = expected_r + gamma * p_live @ v
        new = q.argmax(1)
        if np.array_equal(new, policy):
            return policy, q
        policy = new
    raise AssertionError("policy iteration did not converge")


def _shape(
    r: np.ndarray, phi: np.ndarray, gamma: float, phi_terminal: float = 0.0, task_term: bool = True
) -> np.ndarray:
    phi_next = np.append(phi, phi_terminal)[None, None, :]
    shaping = gamma * phi_next - phi[:, None, None]
    return (r if task_term else 0.0) + shaping


@pytest.mark.parametrize("seed", range(20))
def test_potential_shaping_keeps_the_optimal_policy(seed: int) -> None:
    gamma = 0.9
    p, r = _random_mdp(seed)
    policy, q = _solve(p, r, gamma)
    phi = np.random.default_rng(1000 + seed).normal(
        scale=5.0, size=p.shape[0]
    )  # arbitrary potential
    shaped_policy, shaped_q = _solve(p, _shape(r, phi, gamma), gamma)
    np.testing.assert_array_equal(shaped_policy, policy)
    # Q* shifts by exactly -Φ(s): the shaping telescopes.
    np.testing.assert_allclose(shaped_q, q - phi[:, None], atol=1e-8)


def test_naive_progress_reward_without_task_term_changes_the_policy() -> None:
    gamma = 0.9
    changed = 0
    for seed in range(20):
        p, r = _random_mdp(seed)
        policy, _ = _solve(p, r, gamma)
        phi = np.random.default_rng(1000 + seed).normal(scale=5.0, size=p.shape[0])
        naive_policy, _ = _solve(p, _shape(r, phi, gamma=1.0, task_term=False), gamma)
        changed += not np.array_equal(naive_policy, policy)
    assert changed >= 15, f"naive Φ(s') − Φ(s) changed the optimal policy on only {changed}/20 MDPs"


def test_nonzero_terminal_potential_breaks_invariance() -> None:
    """Why Φ(terminal) = 0: paying γ·Φ(terminal) on termination rewards ending the episode."""
    gamma = 0.9
    p, r = _random_mdp(0)
    policy, _ = _solve(p, r, gamma)
    phi = np.zeros(p.shape[0])
    assert not np.array_equal(_solve(p, _shape(r, phi, gamma, phi_terminal=50.0), gamma)[0], policy)
    np.testing.assert_array_equal(
        _solve(p, _shape(r, phi, gamma, phi_terminal=0.0), gamma)[0], policy
    )
