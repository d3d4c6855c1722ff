"""gym-hil's ``PandaPickCube`` behind :class:`~limbic.sim.env.SimEnv`'s interface.

gym-hil (an environment limbic did not write) is wrapped, not copied: its
``PandaPickCubeGymEnv`` runs the physics, the operational-space controller and judges success;
this adapter gives the learning loop and the actor what they expect from a ``SimEnv``:

* **Observation**: views ``front`` (gym-hil's ``front`` camera) and ``wrist`` (its
  ``handcam_rgb``) at ``camera.height x camera.width``, rendered by our own renderer with
  ``camera.shadow_map_px`` shadows and ``camera.mesh_detail`` (gym-hil's default 4096-px shadow
  map and 8x multisampling cost ~20x); state = the 7 arm joints (rad) then gripper closure in
  [0, 1], the same proprioception as ``robot=sim_panda``; a language instruction naming the
  cube's colour, with phrasings, colours and cube positions the training split never uses
  kept for ``split=heldout``.
* **Action** ``[dx, dy, dz (m), gripper]``: bounds ``±ee_step`` (gym-hil's own EE step,
  0.025 m) and ``[0, 1]``; out-of-bounds actions are rejected (ContractError), as ``SimEnv``
  does. Mapped onto gym-hil's 7-D base action ``[x, y, z, rx, ry, rz, grasp]`` as
  ``x, y, z = dx, dy, dz`` (metres added to its mocap target; gym-hil clips the target to its
  Cartesian bounds), ``rx = ry = rz = 0`` (gym-hil ignores orientation), and
  ``grasp = gripper - current_command`` (gym-hil adds ``grasp`` to its normalised gripper
  command and clips to [0, 1], so the command becomes the closure we asked for), then clipped
  to gym-hil's action-space bounds.
* **Episodes**: ``reset(seed, split)`` is deterministic per seed: the cube's position is drawn
  from our seeded RNG inside gym-hil's own sampling box (gym-hil's ``random_block_position``
  uses the global NumPy RNG, so it is off). Success is gym-hil's sparse task reward (cube
  lifted 10 cm, ``info["succeed"]``); an episode ends on success or when gym-hil terminates
  it (cube pushed off its area: a failure), and is truncated after ``step_limit`` steps
  (0: gym-hil's registered 100).
"""

from __future__ import annotations

from typing import Any

import gym_hil  # noqa: F401  (registers the gym_hil/* ids read below)
import gymnasium as gym
import mujoco
import numpy as np
from gym_hil.envs import PandaPickCubeGymEnv
from gym_hil.mujoco_gym_env import MAX_GRIPPER_COMMAND, GymRenderingSpec
from gym_hil.wrappers.hil_wrappers import DEFAULT_EE_STEP_SIZE

from limbic.contracts import ActionKind, ActionSpec, Observation
from limbic.sim.arms import PANDA
from limbic.sim.env import HIL_PICK_CUBE, ObservingEnv, SimConfig, StepResult
from limbic.sim.scene import AppearanceJitter
from limbic.sim.tasks import COLORS, HELDOUT_COLORS, TRAIN_COLORS, Phrasings, Split, in_heldout_cell

BASE_ID = "gym_hil/PandaPickCubeBase-v0"
"""The registered gym-hil id whose step limit we keep."""
CAMERAS = {"front": "front", "wrist": "handcam_rgb"}
"""Our view name -> gym-hil's camera."""
CUBE_AREA_XY = ((0.3, -0.15), (0.5, 0.15))
"""Where cubes are placed (m): gym-hil's own block sampling box (``_SAMPLING_BOUNDS``)."""
PHRASINGS = Phrasings(
    train=(
        "pick up the {c} cube",
        "lift the {c} cube",
        "grab the {c} cube and raise it",
    ),
    heldout=("raise the {c} block above the table",),
)


def hil_action_spec() -> ActionSpec:
    """Our action space on gym-hil: ``[dx, dy, dz]`` within gym-hil's EE step, gripper in [0, 1]."""
    step = np.array([DEFAULT_EE_STEP_SIZE[k] for k in ("x", "y", "z")], dtype=np.float64)
    return ActionSpec(
        ActionKind.EE_DELTA,
        ("dx", "dy", "dz", "gripper"),
        np.append(-step, 0.0),
        np.append(step, 1.0),
    )


class HilPickCubeEnv(ObservingEnv):
    """gym-hil's PandaPickCube, observed and commanded like a :class:`SimEnv`."""

    def __init__(self, cfg: SimConfig | None = None):
        self.cfg = cfg = cfg or SimConfig(env=HIL_PICK_CUBE, arm="panda", task="pick_cube")
        if cfg.env != HIL_PICK_CUBE:
            raise ValueError(f"HilPickCubeEnv needs sim.env={HIL_PICK_CUBE}, got {cfg.env!r}")
        self.arm = PANDA
        h, w = cfg.camera.image_hw
        self.hil = PandaPickCubeGymEnv(
            control_dt=1.0 / cfg.control_hz,
            render_spec=GymRenderingSpec(height=h, width=w),
            image_obs=False,  # we render (cheaper settings), gym-hil only steps
            reward_type="sparse",
            random_block_position=False,  # placed from our seeded RNG instead
        )
        self.hil.close()  # free the renderer gym-hil made; ours is made on first use
        self.model: mujoco.MjModel = self.hil.model
        self.data: mujoco.MjData = self.hil.data
        self.model.vis.quality.shadowsize = cfg.camera.shadow_map_px
        self.model.vis.quality.offsamples = 0
        self.action_spec = hil_action_spec()
        self.hil_low = self.hil.action_space.low.astype(np.float64)
        self.hil_high = self.hil.action_space.high.astype(np.float64)
        self.step_limit = cfg.step_limit or int(gym.spec(BASE_ID).max_episode_steps)
        self.views = cfg.camera.views
        self._cam_ids = {v: self.model.camera(CAMERAS[v]).id for v in self.views}
        self._appearance = AppearanceJitter(self.model, cfg.camera, CAMERAS["front"])
        self._block_geom = self.model.geom("block").id
        self._block_half_m = float(self.model.geom_size[self._block_geom][2])
        self._grip_ctrl = self.model.actuator(PANDA.gripper.actuator).id
        self._grip_qadr = self.model.joint(PANDA.gripper.joint).qposadr[0]
        self._arm_qadr = np.array([self.model.joint(j).qposadr[0] for j in PANDA.arm_joints])
        self._renderer: mujoco.Renderer | None = None
        self.scene_option = cfg.camera.scene_option()
        self.rng = np.random.default_rng()
        self.split = Split(cfg.split)
        self.instruction = ""
        self.episode_id = ""
        self.color = ""
        self.t = 0
        self._success = False
        self._last_obs: Observation | None = None

    # --- episodes ------------------------------------------------------------------------
    def reset(self, seed: int | None = None, split: str | Split | None = None) -> Observation:
        """Start a new episode; the same ``seed`` (and split) gives the same episode."""
        rng = self._begin(seed, split)
        heldout = self.split is Split.HELDOUT
        self.hil.reset()
        if self.cfg.randomize:
            self._appearance.apply(rng)
        self.color = str(rng.choice(HELDOUT_COLORS if heldout else TRAIN_COLORS))
        self.model.geom_rgba[self._block_geom, :3] = COLORS[self.color]
        xy = self._cube_xy(rng, heldout)
        # gym-hil's reset put the cube at rest on the table; only its x, y change here, so its
        # cached start height (the success reference) stays right
        self.data.jnt("block").qpos[:2] = xy
        mujoco.mj_forward(self.model, self.data)
        self.instruction = PHRASINGS.pick(rng, self.split).format(c=self.color)
        self.episode_id = rng.bytes(8).hex()
        self.t = 0
        self._success = False
        self._last_obs = self._observe()
        return self._last_obs

    @staticmethod
    def _cube_xy(rng: np.random.Generator, heldout: bool) -> np.ndarray:
        (x0, y0), (x1, y1) = CUBE_AREA_XY
        while True:  # a quarter of the cells are held out: a few draws at most
            u, v = rng.uniform(0.0, 1.0, size=2)
            if in_heldout_cell(u, v) == heldout:
                return np.array([x0 + (x1 - x0) * u, y0 + (y1 - y0) * v])

    def hil_action(self, action: np.ndarray) -> np.ndarray:
        """Our in-bounds ``[dx, dy, dz, gripper]`` -> gym-hil's ``[x, y, z, rx, ry, rz, grasp]``."""
        command = float(self.data.ctrl[self._grip_ctrl]) / MAX_GRIPPER_COMMAND
        raw = np.array([*action[:3], 0.0, 0.0, 0.0, float(action[3]) - command])
        return np.clip(raw, self.hil_low, self.hil_high)

    def step(self, action: np.ndarray) -> StepResult:
        """Apply one action for one control period and observe the result."""
        applied = self.action_spec.validate(action)
        _, _, terminated, _, info = self.hil.step(self.hil_action(applied))
        self.t += 1
        self._success = bool(info["succeed"])
        terminated = bool(terminated)
        truncated = (not terminated) and self.t >= self.step_limit
        self._last_obs = self._observe()
        return StepResult(
            self._last_obs, float(self._success), terminated, truncated, self._success, applied
        )

    def success(self) -> bool:
        """gym-hil's success on the last step (the cube lifted 10 cm)."""
        return self._success

    # --- observing -----------------------------------------------------------------------
    def state(self) -> np.ndarray:
        """Proprioception: arm joint positions (rad) then gripper closure in [0, 1], float32."""
        closure = PANDA.gripper.closure(float(self.data.qpos[self._grip_qadr]))
        return np.append(self.data.qpos[self._arm_qadr], closure).astype(np.float32)

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the state vector's components."""
        return (*PANDA.arm_joints, "gripper")

    def goal_info(self) -> dict[str, Any]:
        """Privileged state for scripted operators (never given to a learning policy)."""
        d = self.data
        return {
            "cube": d.sensor("block_pos").data.copy(),
            "tool": d.sensor("2f85/pinch_pos").data.copy(),
            "target": d.mocap_pos[0].copy(),
            "cube_half": self._block_half_m,
            "closure": PANDA.gripper.closure(float(d.qpos[self._grip_qadr])),
        }

    def __enter__(self) -> HilPickCubeEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
