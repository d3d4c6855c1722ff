"""The scripted operator: the scripted expert behind the Teleoperator interface.

In simulation it plays the human: it records demonstrations now, and later takes over
from the policy when the intervention protocol asks for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from limbic.contracts import Observation
from limbic.sim.envs import make_expert
from limbic.sim.expert import ExpertConfig, ExpertMode
from limbic.sim.robot import SimRobot
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
