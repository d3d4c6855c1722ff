"""``SimRobot``: a simulated arm behind the same Robot interface as the physical arms.

Time advances in ``send_action`` (one control period of physics), as it does on a real arm
between two commands. The episode methods (``start_episode``, ``success``) are what an
episode driver needs: here the task resets the scene and judges success; on a real arm an
operator does both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from limbic.contracts import ActionSpec, Observation
from limbic.robot.base import Robot
from limbic.sim.env import SimConfig, SimEnv, StepResult
from limbic.sim.envs import make_sim_env, sim_action_spec


class SimRobot(Robot):
    """A MuJoCo arm and task, driven through the Robot interface.

    ``cfg.env`` picks the simulator: limbic's own :class:`SimEnv` or an adapter with its
    interface (gym-hil's PandaPickCube).
    """

    def __init__(self, cfg: SimConfig | None = None):
        self.cfg = cfg or SimConfig()
        self.name = f"sim_{self.cfg.arm}"
        self.robot_type = f"sim_{self.cfg.arm}"
        self.env: SimEnv | None = None
        self.last_step: StepResult | None = None

    # --- Robot interface -------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self.env is not None

    def connect(self) -> None:
        """Build the scene and start a first episode."""
        if self.env is None:
            self.env = make_sim_env(self.cfg)
            self.env.reset()

    def disconnect(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    def get_observation(self) -> Observation:
        self._require_connected()
        return self.env.observation

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Apply one action for one control period; rejects out-of-bounds actions with a ContractError."""
        self._require_connected()
        self.last_step = self.env.step(action)
        return self.last_step.action

    @property
    def action_spec(self) -> ActionSpec:
        if self.env is not None:
            return self.env.action_spec
        return sim_action_spec(self.cfg)

    @property
    def observation_features(self) -> dict[str, Any]:
        from limbic.sim.arms import get_arm

        arm = get_arm(self.cfg.arm)
        h, w = self.cfg.camera.image_hw
        features: dict[str, Any] = {view: (h, w, 3) for view in self.cfg.camera.views}
        features["state"] = (arm.n_joints + 1,)
        return features

    # --- episodes ---------------------------------------------------------------------------
    def start_episode(self, seed: int | None = None, split: str | None = None) -> Observation:
        """Reset the scene for a new episode (same seed, same episode)."""
        self._require_connected()
        self.last_step = None
        return self.env.reset(seed=seed, split=split)

    @property
    def instruction(self) -> str:
        """The current episode's language instruction."""
        self._require_connected()
        return self.env.instruction

    @property
    def split(self) -> str:
        """The held-out split the current episode was drawn from (``train`` or ``heldout``)."""
        self._require_connected()
        return str(self.env.split)

    @property
    def step_limit(self) -> int:
        """Steps before the current episode is truncated."""
        self._require_connected()
        return self.env.step_limit

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the state vector's components."""
        self._require_connected()
        return self.env.state_names

    def success(self) -> bool:
        """The task's success predicate on the current state."""
        self._require_connected()
        return self.env.success()

    def task_progress(self) -> float | None:
        """The episode's true progress now, in [0, 1] (None where the task does not define
        it); recordings store it for the progress critic."""
        self._require_connected()
        return self.env.task_progress()
