"""The intervention arbiter's slot: who moves the arm this tick, the policy or the human.

The actor loop asks :meth:`InterventionArbiter.choose` once per tick with the observation
and the policy's action; it answers the action to execute and whether a human chose it
(stored per step as ``intervention``, and an episode with any intervention is filed in the
replay's intervention partition). The teleoperation issue fills this slot with the graded
human-in-the-loop protocol; :class:`PolicyOnlyArbiter` always lets the policy act.
"""

from __future__ import annotations

import abc

import numpy as np

from limbic.contracts import Observation


class InterventionArbiter(abc.ABC):
    """Chooses between the policy's action and a human's, tick by tick."""

    name: str = "arbiter"

    def on_episode_start(self, observation: Observation) -> None:
        """Called with the first observation of each episode."""

    @abc.abstractmethod
    def choose(
        self, observation: Observation, policy_action: np.ndarray
    ) -> tuple[np.ndarray, bool]:
        """``(action to execute, True when a human chose it)``."""

    def close(self) -> None:
        """Release any device the arbiter holds."""


class PolicyOnlyArbiter(InterventionArbiter):
    """Pass-through: the policy always acts, nobody intervenes."""

    name = "policy"

    def choose(
        self, observation: Observation, policy_action: np.ndarray
    ) -> tuple[np.ndarray, bool]:
        return policy_action, False
