"""The scripted operator: the scripted expert behind the Teleoperator interface.

In simulation it plays the human: it records demonstrations (:class:`ScriptedOperator`) and
takes over from the policy when the policy goes wrong (:class:`ScriptedTakeover`, an
intervention arbiter, as a human watching a learning arm would).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from limbic.contracts import ActionSpec, Observation
from limbic.launch.config import ConfigError
from limbic.sim.envs import make_expert
from limbic.sim.expert import ExpertConfig, ExpertMode
from limbic.sim.robot import SimRobot
from limbic.teleop.arbiter import InterventionArbiter, TakeoverConfig
from limbic.teleop.base import Teleoperator


class ScriptedOperator(Teleoperator):
    """Drives a :class:`SimRobot` with the privileged scripted expert."""

    name = "scripted"

    def __init__(self, robot: SimRobot, cfg: ExpertConfig | None = None, seed: int | None = None):
        self.robot = robot
        self.cfg = cfg or ExpertConfig()
        self.seed = seed
        self.expert: Any = None  # ScriptedExpert or an external env's expert

    def connect(self) -> None:
        self.robot._require_connected()
        self.expert = make_expert(self.robot.env, self.cfg, self.seed)

    def on_episode_start(self) -> None:
        if self.expert is None:
            self.connect()
        self.expert.reset()

    @property
    def mode(self) -> ExpertMode:
        """How the expert behaves this episode (expert, slow, partial, failed)."""
        return self.expert.mode if self.expert else ExpertMode.EXPERT

    def get_action(self, observation: Observation) -> np.ndarray:
        if self.expert is None:
            self.connect()
        return self.expert.act()

    @property
    def is_intervening(self) -> bool:
        return True


class ScriptedTakeover(InterventionArbiter):
    """The scripted expert as a watching human who takes over when the policy goes wrong.

    Under the ``gap`` rule the expert is asked for its action on every tick, also while the
    policy drives, so it follows the task's phases along the arm's real path and can take over
    from any state. Under ``mistakes`` it judges the arm's course instead and, when it takes
    over, re-plans its phase from the scene.
    """

    name = "scripted"

    def __init__(self, expert: Any, spec: ActionSpec, cfg: TakeoverConfig | None = None):
        self.expert, self.cfg = expert, cfg or TakeoverConfig()
        if self.cfg.rule == "mistakes" and not getattr(expert, "judges_mistakes", False):
            raise ConfigError(
                "takeover.rule",
                "'mistakes' needs an expert that judges this task's mistakes "
                "(the simulator's pick-and-place and stack tasks); use 'gap'",
            )
        self.half = np.maximum((spec.high - spec.low) / 2, 1e-9).astype(np.float32)
        self.streak = self.left = 0
        self.takeovers = 0
        """Takeovers since construction."""
        self.reasons: Counter[str] = Counter()
        """Takeovers by what the operator saw go wrong (``gap`` for the gap rule)."""

    @classmethod
    def for_robot(
        cls, robot: Any, cfg: TakeoverConfig | None = None, expert: ExpertConfig | None = None
    ) -> ScriptedTakeover:
        """The arbiter for a simulated robot (it needs the simulator's privileged state);
        ``expert`` configures the watching expert (default: the clean expert)."""
        if not isinstance(robot, SimRobot):
            raise TypeError(
                f"the scripted takeover arbiter needs a simulated robot, got {type(robot).__name__}"
            )
        robot._require_connected()
        return cls(make_expert(robot.env, expert or ExpertConfig()), robot.action_spec, cfg)

    def on_episode_start(self, observation: Observation | None = None) -> None:
        self.expert.reset()
        self.streak = self.left = 0

    def gap(self, policy_action: np.ndarray, expert_action: np.ndarray) -> float:
        """Largest component difference of two env actions in the normalised action space."""
        diff = (np.asarray(policy_action, np.float32) - expert_action) / self.half
        return float(np.abs(diff).max())

    def choose(
        self, observation: Observation | None, policy_action: np.ndarray
    ) -> tuple[np.ndarray, bool]:
        if self.left > 0:
            self.left -= 1
            return self.expert.act(), True
        if self.cfg.rule == "mistakes":
            reason = self.expert.mistake(
                policy_action, self.cfg.patience, self.cfg.anticipate, self.cfg.stall_near
            )
            if reason is None:
                return policy_action, False
            self._take_over(reason)
            self.expert.resume()  # it has not been driving: re-plan from the scene
            return self.expert.act(), True
        expert_action = self.expert.act()  # every tick, to follow the phases
        far = self.gap(policy_action, expert_action) > self.cfg.threshold
        self.streak = self.streak + 1 if far else 0
        if self.streak >= self.cfg.patience:
            self.streak = 0
            self._take_over("gap")
            return expert_action, True
        return policy_action, False

    def _take_over(self, reason: str) -> None:
        self.left = self.cfg.hold - 1
        self.takeovers += 1
        self.reasons[reason] += 1
