"""A scripted expert for gym-hil's PandaPickCube (gym-hil ships none).

It reads privileged simulator state (the cube's and the gripper's positions, the controller's
target) and plays hover -> descend -> close -> lift, re-trying when the cube slips. The same
:class:`~limbic.sim.expert.ExpertConfig` knobs as :class:`~limbic.sim.expert.ScriptedExpert`
make it imperfect on purpose: action noise, speed, and slow, partial or failed episodes.
"""

from __future__ import annotations

import numpy as np

from limbic.sim.expert import ExpertConfig, ExpertMode, episode_plan
from limbic.sim.hil_adapter import HilPickCubeEnv

HOVER_M = 0.06
"""Height above the cube's centre where the descent starts."""
LIFT_M = 0.16
"""How far above its resting height the cube is carried (gym-hil's success is 0.10)."""
TOL_M = 0.006
"""Position tolerance of the approach."""


class HilPickCubeExpert:
    """Closed-loop scripted operator for :class:`HilPickCubeEnv`; :meth:`reset`, then :meth:`act` per step."""

    def __init__(
        self, env: HilPickCubeEnv, cfg: ExpertConfig | None = None, seed: int | None = None
    ):
        self.env = env
        self.cfg = cfg or ExpertConfig()
        self.rng = np.random.default_rng(seed)
        self.mode = ExpertMode.EXPERT
        self.reset()

    def reset(self) -> ExpertMode:
        """Start a new episode: draw the mode and clear the plan."""
        self.mode, self.stop_phase, self.speed = episode_plan(self.cfg, self.rng)
        self.phase = 0
        self.timer = 0
        angle = self.rng.uniform(0, 2 * np.pi)
        # a failed episode grasps beside the cube: 2.5-4 cube widths away
        self.miss_xy = np.array([np.cos(angle), np.sin(angle)]) * self.rng.uniform(0.1, 0.16)
        self.rest_z: float | None = None
        self.idle: np.ndarray | None = None
        return self.mode

    def act(self) -> np.ndarray:
        """The expert's action for the env's current state, inside the declared bounds."""
        g = self.env.goal_info()
        if self.rest_z is None:
            self.rest_z = float(g["cube"][2])
        if self.phase >= self.stop_phase:
            target, closure = self._idle(g), float(g["closure"] > 0.5)
        else:
            target, closure = self._plan(g)
        speed = self.speed
        if self.mode is ExpertMode.SLOW and self.rng.uniform() < 0.15:
            speed = 0.05  # hesitation
        spec = self.env.action_spec
        step = spec.high[:3] * speed
        # deltas move gym-hil's controller target, so steer the target (it leads the tool)
        delta = np.clip(target - g["target"], -step, step)
        action = np.append(delta, closure)
        if self.cfg.noise_std > 0:
            noise = self.rng.normal(0.0, self.cfg.noise_std, size=spec.dim) * spec.high
            noise[-1] = 0.0
            action = action + noise
        return spec.clip(action).astype(np.float32)

    def _advance(self, done: bool) -> None:
        self.timer += 1
        if done:
            self.phase += 1
            self.timer = 0

    def _idle(self, g: dict) -> np.ndarray:
        """A partial episode: drift slowly around where the expert gave up."""
        if self.idle is None:
            self.idle = g["tool"] + np.array([0.0, 0.0, 0.03])
        self.idle = self.idle + self.rng.normal(0.0, 0.003, 3)
        return self.idle

    def _plan(self, g: dict) -> tuple[np.ndarray, float]:
        cube, tool, half = g["cube"], g["tool"], float(g["cube_half"])
        grasp_xy = cube[:2] + (self.miss_xy if self.mode is ExpertMode.FAILED else 0.0)
        held = np.linalg.norm(cube - tool) < 2.0 * half and cube[2] > self.rest_z + 0.5 * half
        p = self.phase
        if p == 0:  # above the cube, open
            target = np.array([*grasp_xy, self.rest_z + HOVER_M])
            self._advance(
                np.linalg.norm(tool[:2] - grasp_xy) < TOL_M and abs(tool[2] - target[2]) < 3 * TOL_M
            )
            return target, 0.0
        if p == 1:  # straight down around it
            target = np.array([*grasp_xy, self.rest_z])
            self._advance(abs(tool[2] - target[2]) < TOL_M or self.timer > 15)
            return target, 0.0
        if p == 2:  # close and let the fingers settle
            self._advance(self.timer >= 3)
            return np.array([*grasp_xy, self.rest_z]), 1.0
        target = np.array([*tool[:2], self.rest_z + LIFT_M])
        if self.mode is not ExpertMode.FAILED and tool[2] > self.rest_z + 2.5 * half and not held:
            self.phase, self.timer = 0, 0  # the cube stayed behind: open and try again
            return target, 0.0
        return target, 1.0  # lift (and hold it up)
