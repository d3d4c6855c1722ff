"""The intervention arbiter's slot: who moves the arm this tick, the policy or the human.

The actor loop asks :meth:`InterventionArbiter.choose` once per tick with the observation
and the policy's action; it answers the action to execute and whether a human chose it
(stored per step as ``intervention``, and an episode with any intervention is filed in the
replay's intervention partition). The teleoperation issue fills this slot with the graded
human-in-the-loop protocol; :class:`PolicyOnlyArbiter` always lets the policy act.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from limbic.contracts import Observation
from limbic.launch.config import require


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


TAKEOVER_RULES = ("gap", "mistakes")
"""The simulated human's rules for taking over (``TakeoverConfig.rule``)."""


@dataclass
class TakeoverConfig:
    """When the simulated human takes the arm from the policy (HG-DAgger's gating rule).

    The operator watches every tick: it works out what it would do, and when the policy's
    action differs from that by more than ``threshold`` in some component (in the normalised
    [-1, 1] action space: a wrong direction, a stalled arm, the gripper at the wrong time)
    for ``patience`` ticks in a row, it takes over for ``hold`` ticks, then hands the arm back.
    """

    threshold: float = 0.6
    patience: int = 3
    hold: int = 8
    rule: str = "gap"
    """When to take over. ``gap``: the policy's action differs from the operator's by more than
    ``threshold`` for ``patience`` ticks (a difference of style counts too, so the operator also
    takes the arm from a policy on its own good path). ``mistakes``: only when the arm is going
    wrong, as the scripted expert judges it (``ScriptedExpert.mistake``: the jaws shut on
    nothing, the gripper closed high above the cube, the cube let go away from the goal, or for
    ``patience`` ticks the arm moving away from the cube or the goal, longer for a stalled arm;
    pick and place and stack); the operator then re-plans from the scene and drives ``hold``
    ticks."""
    anticipate: bool = False
    """``mistakes`` only: also stop a grasp before the jaws shut, when the policy commands them
    closed while they are open and out of reach of the cube (``limbic.sim.expert.REACH``), as a
    person sees the gripper start to close in the wrong place. The correction then comes on the
    state where the mistake starts, not after it."""
    stall_near: bool = False
    """``mistakes`` only: an arm that makes no progress towards the cube's grasp point (in 3-D)
    for ``STALL_PATIENCE`` times ``patience`` ticks is stalled near the cube too, not only far
    from it, as a person steps in when the gripper hovers beside the cube without closing in."""

    def __post_init__(self) -> None:
        require(
            self.rule in TAKEOVER_RULES,
            "takeover.rule",
            f"must be 'gap' or 'mistakes', got {self.rule!r}",
        )
        require(
            not self.anticipate or self.rule == "mistakes",
            "takeover.anticipate",
            f"needs takeover.rule=mistakes, got {self.rule!r}",
        )
        require(
            not self.stall_near or self.rule == "mistakes",
            "takeover.stall_near",
            f"needs takeover.rule=mistakes, got {self.rule!r}",
        )
        require(self.threshold > 0, "takeover.threshold", f"must be > 0, got {self.threshold}")
        require(self.patience >= 1, "takeover.patience", f"must be >= 1, got {self.patience}")
        require(self.hold >= 1, "takeover.hold", f"must be >= 1, got {self.hold}")
