"""A ``gymnasium.Env`` view of every simulated task, with registered ids.

Call :func:`register_envs` once (it is idempotent), then ``gymnasium.make`` by id::

    from limbic.sim.gym_env import register_envs
    register_envs()
    env = gymnasium.make("limbic/SO101-PickPlace-v0")

The observation is ``{"front": uint8[H,W,3], "wrist": uint8[H,W,3], "state": float32[n]}``;
the instruction is in ``info["instruction"]``. The reward is the sparse task success (the
critic's shaped reward is added by the learner, not here).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import gymnasium as gym
import numpy as np

from limbic.sim.env import SimConfig, SimEnv

ENV_IDS: dict[str, tuple[str, str]] = {
    f"limbic/{arm_id}-{task_id}-v0": (arm, task)
    for arm, arm_id in (("so101", "SO101"), ("panda", "Panda"))
    for task, task_id in (
        ("reach", "Reach"),
        ("push", "Push"),
        ("pick_place", "PickPlace"),
        ("stack", "Stack"),
    )
}


class LimbicSimEnv(gym.Env):
    """Gymnasium adapter over :class:`SimEnv`."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self, cfg: SimConfig | None = None, render_mode: str | None = None, **overrides: Any
    ):
        cfg = cfg or SimConfig()
        if overrides:
            cfg = replace(cfg, **overrides)
        self.sim = SimEnv(cfg)
        self.render_mode = render_mode
        h, w = cfg.camera.image_hw
        spaces: dict[str, gym.Space] = {
            view: gym.spaces.Box(0, 255, shape=(h, w, 3), dtype=np.uint8)
            for view in cfg.camera.views
        }
        n = len(self.sim.state_names)
        spaces["state"] = gym.spaces.Box(-np.inf, np.inf, shape=(n,), dtype=np.float32)
        self.observation_space = gym.spaces.Dict(spaces)
        spec = self.sim.action_spec
        self.action_space = gym.spaces.Box(spec.low, spec.high, dtype=np.float32)
        self.metadata = {**self.metadata, "render_fps": int(cfg.control_hz)}

    def _obs(self) -> dict[str, np.ndarray]:
        o = self.sim.observation
        return {**o.images, "state": o.state}

    def _info(self, success: bool = False) -> dict[str, Any]:
        return {
            "instruction": self.sim.instruction,
            "is_success": success,
            "episode_id": self.sim.episode_id,
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is None and self.sim.episode_id == "":
            seed = int(self.np_random.integers(2**31))
        split = (options or {}).get("split")
        self.sim.reset(seed=seed, split=split)
        return self._obs(), self._info()

    def step(self, action: np.ndarray):
        r = self.sim.step(np.asarray(action, dtype=np.float32))
        return self._obs(), r.reward, r.terminated, r.truncated, self._info(r.success)

    def render(self) -> np.ndarray | None:
        if self.render_mode == "rgb_array":
            return self.sim.render(self.sim.views[0])
        return None

    def close(self) -> None:
        self.sim.close()


def make_env(arm: str, task: str, **overrides: Any) -> LimbicSimEnv:
    """Entry point behind the registered ids."""
    return LimbicSimEnv(SimConfig(arm=arm, task=task), **overrides)


def register_envs() -> list[str]:
    """Register every ``limbic/<Arm>-<Task>-v0`` id with gymnasium (idempotent); return the ids."""
    for env_id, (arm, task) in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="limbic.sim.gym_env:make_env",
                kwargs={"arm": arm, "task": task},
                max_episode_steps=None,
            )
    return list(ENV_IDS)
