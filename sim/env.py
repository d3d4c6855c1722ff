"""``SimEnv``: one arm, one task, two cameras, stepped at the control rate.

This is the simulation core. ``SimRobot`` (the Robot interface) and the gymnasium view are
thin adapters over it, so what a policy sees in a gym loop is exactly what the actor loop
sees through the Robot interface.
"""

from __future__ import annotations

import atexit
import weakref
from dataclasses import dataclass, field
from typing import Any

import mujoco
import numpy as np

from limbic.contracts import ActionSpec, Observation
from limbic.launch.config import ConfigError, require
from limbic.sim.arms import ArmSpec, get_arm
from limbic.sim.control import ActionConfig, Controller, make_action_spec
from limbic.sim.kinematics import ArmKinematics
from limbic.sim.scene import FRONT_CAMERA, AppearanceJitter, CameraConfig, build_scene_spec
from limbic.sim.tasks import PALETTES, TASKS, Split, Task, make_task, task_progress

HOME_HEIGHT_M = {"so101": 0.09, "panda": 0.25}

HIL_PICK_CUBE = "gym_hil/PandaPickCube"
"""gym-hil's Panda cube-lifting env, driven through :mod:`limbic.sim.hil_adapter`."""
SIM_ENVS = ("limbic", HIL_PICK_CUBE)
"""Simulators a :class:`SimConfig` can pick: ``limbic`` (our own scenes) or an external env."""

_OPEN_ENVS: weakref.WeakSet[Any] = weakref.WeakSet()
_EXIT_HOOK_REGISTERED = False


def _close_open_envs() -> None:
    # GL contexts must be freed before EGL's own exit hook terminates the display.
    for env in list(_OPEN_ENVS):
        env.close()


def close_at_exit(env: Any) -> None:
    """Have ``env.close()`` run at interpreter exit, before EGL tears its display down.

    For any env that owns a MuJoCo renderer; call it right after creating the renderer.
    """
    global _EXIT_HOOK_REGISTERED
    _OPEN_ENVS.add(env)
    if not _EXIT_HOOK_REGISTERED:  # registered after EGL's hook, so it runs before it
        atexit.register(_close_open_envs)
        _EXIT_HOOK_REGISTERED = True


@dataclass
class SimConfig:
    """A simulated arm, its task and how it is observed and commanded."""

    env: str = "limbic"
    """Simulator: ``limbic`` (our own scenes, any arm and task) or ``gym_hil/PandaPickCube``
    (gym-hil's env through an adapter; arm ``panda``, task ``pick_cube``)."""
    arm: str = "so101"
    """Arm model: ``so101`` or ``panda``."""
    task: str = "pick_place"
    """Task: ``reach``, ``push``, ``pick_place`` or ``stack``."""
    split: str = "train"
    """``train`` or ``heldout`` (colours, positions and phrasings never used for training)."""
    palette: str = "train"
    """The training split's object colours: ``train`` (six) or ``wide`` (those and eight more,
    each named in the instruction; ``limbic.sim.tasks.WIDE_COLORS``), for recordings that teach
    a critic colours beyond six. The held-out split keeps its own colours either way."""
    control_hz: float = 10.0
    """Control rate; each step advances physics by 1 / control_hz seconds."""
    step_limit: int = 0
    """Steps before an episode is truncated; 0 uses the task's own limit."""
    home_xy: tuple[float, float] | None = None
    """Where over the table the tool rests when an episode starts (m, at the arm's home height);
    None: above the work area's centre. Tasks that choose their own start (reach) ignore it."""
    randomize: bool = True
    """Randomise lighting, camera pose and start posture at reset (object placement always is)."""
    camera: CameraConfig = field(default_factory=CameraConfig)
    action: ActionConfig = field(default_factory=ActionConfig)

    def __post_init__(self) -> None:
        from limbic.sim.arms import ARMS

        require(self.env in SIM_ENVS, "sim.env", f"{self.env!r} is not one of {list(SIM_ENVS)}")
        require(self.arm in ARMS, "sim.arm", f"{self.arm!r} is not one of {sorted(ARMS)}")
        if self.env == HIL_PICK_CUBE:
            require(
                self.arm == "panda",
                "sim.arm",
                f"{HIL_PICK_CUBE} has a Panda only (arm=panda), got {self.arm!r}",
            )
            require(
                self.task == "pick_cube",
                "sim.task",
                f"{HIL_PICK_CUBE} has one task, 'pick_cube' (select task=pick_cube), "
                f"got {self.task!r}",
            )
            require(
                self.action.kind == "ee_delta" and not self.action.yaw,
                "sim.action",
                f"{HIL_PICK_CUBE} moves the tool in x, y, z only: needs action.kind=ee_delta "
                f"and action.yaw=false, got kind={self.action.kind!r} yaw={self.action.yaw}",
            )
            require(
                self.home_xy is None,
                "sim.home_xy",
                f"{HIL_PICK_CUBE} places its own arm at reset; leave home_xy unset",
            )
        else:
            require(
                self.task in TASKS,
                "sim.task",
                f"{self.task!r} is not one of {sorted(TASKS)}"
                + (
                    " (pick_cube is gym-hil's: robot=hil_pick_cube)"
                    if self.task == "pick_cube"
                    else ""
                ),
            )
        if self.home_xy is not None:
            self.home_xy = tuple(float(v) for v in self.home_xy)
            require(
                len(self.home_xy) == 2,
                "sim.home_xy",
                f"needs 2 numbers (x, y in m), got {list(self.home_xy)}",
            )
        splits = [s.value for s in Split]
        require(self.split in splits, "sim.split", f"{self.split!r} is not one of {splits}")
        require(
            self.palette in PALETTES,
            "sim.palette",
            f"{self.palette!r} is not one of {sorted(PALETTES)}",
        )
        require(
            self.palette == "train" or self.env == "limbic",
            "sim.palette",
            f"{self.env} colours its own objects; palette={self.palette!r} needs env=limbic",
        )
        require(
            1.0 <= self.control_hz <= 100.0,
            "sim.control_hz",
            f"must be in [1, 100], got {self.control_hz}",
        )
        require(self.step_limit >= 0, "sim.step_limit", f"must be >= 0, got {self.step_limit}")


@dataclass
class StepResult:
    """What one control step produced."""

    observation: Observation
    reward: float
    terminated: bool
    truncated: bool
    success: bool
    action: np.ndarray
    """The action as applied (validated, float32)."""


class ObservingEnv:
    """The camera and observation half of a simulated env: offscreen rendering, and every view
    rendered at the sim's clock with the proprioception and the instruction as one
    :class:`Observation`.

    The env provides ``model``/``data`` (MuJoCo), ``cfg.camera``, ``views``, ``_cam_ids``,
    ``scene_option``, ``_renderer``, ``rng``, ``split``, ``state()``, ``instruction``,
    ``episode_id``, ``t`` and ``_last_obs``.
    """

    @property
    def renderer(self) -> mujoco.Renderer:
        """The offscreen renderer, created on first use (needs a GL context)."""
        if self._renderer is None:
            h, w = self.cfg.camera.image_hw
            try:
                self._renderer = mujoco.Renderer(self.model, h, w)
            except mujoco.FatalError as e:
                raise RuntimeError(
                    f"MuJoCo could not create an OpenGL context ({e}). Without a display, set "
                    "MUJOCO_GL=egl before anything imports mujoco (import limbic.sim first)."
                ) from e
            close_at_exit(self)
        return self._renderer

    def render(self, view: str) -> np.ndarray:
        """One camera view as ``uint8[H, W, 3]``."""
        r = self.renderer
        r.update_scene(self.data, camera=self._cam_ids[view], scene_option=self.scene_option)
        return r.render()

    def _begin(self, seed: int | None, split: str | Split | None) -> np.random.Generator:
        """Reseed (a given seed makes the episode reproducible) and set the split; return the
        episode's RNG."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        if split is not None:
            self.split = Split(split)
        return self.rng

    def close(self) -> None:
        """Free the renderer's GL context."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def _observe(self) -> Observation:
        ts = int(round(self.data.time * 1e9))
        images = {v: self.render(v) for v in self.views}
        return Observation(
            timestamp_ns=ts,
            images=images,
            state=self.state(),
            instruction=self.instruction,
            episode_id=self.episode_id,
            step=self.t,
            frame_timestamps_ns=dict.fromkeys(images, ts),
        )

    @property
    def observation(self) -> Observation:
        """The latest observation (after the last reset or step)."""
        if self._last_obs is None:
            raise RuntimeError("call reset() before reading an observation")
        return self._last_obs

    def observe_again(self) -> Observation:
        """Render and read the scene anew, as it is now: for a scene edited in place (a mocap
        body moved, then ``mj_forward``) between steps. The episode's step count stays."""
        if self._last_obs is None:
            raise RuntimeError("call reset() before reading an observation")
        self._last_obs = self._observe()
        return self._last_obs


class SimEnv(ObservingEnv):
    """A MuJoCo scene of one arm and one task, stepped at the control rate."""

    def __init__(self, cfg: SimConfig | None = None):
        self.cfg = cfg = cfg or SimConfig()
        self.arm: ArmSpec = get_arm(cfg.arm)
        self.task: Task = make_task(cfg.task, self.arm)
        spec = build_scene_spec(self.arm, cfg.camera)
        self.task.add_objects(spec)
        self.model = spec.compile()
        self.data = mujoco.MjData(self.model)
        self.task.bind(self.model)
        self.kin = ArmKinematics(self.model, self.arm)
        self.action_spec: ActionSpec = make_action_spec(self.arm, cfg.action)
        self.controller = Controller(self.model, self.arm, self.kin, self.action_spec)
        dt = 1.0 / cfg.control_hz
        self.substeps = max(1, int(round(dt / self.model.opt.timestep)))
        self.step_limit = cfg.step_limit or self.task.step_limit
        self.views = cfg.camera.views
        self._cameras = {"front": FRONT_CAMERA, "wrist": self.arm.wrist_camera}
        self._cam_ids = {v: self.model.camera(self._cameras[v]).id for v in self.views}
        self._appearance = AppearanceJitter(self.model, cfg.camera, FRONT_CAMERA)
        self._renderer: mujoco.Renderer | None = None
        self.scene_option = cfg.camera.scene_option()
        self.q_home = self._solve_home()
        self.rng = np.random.default_rng()
        self.split = Split(cfg.split)
        self.task.palette = PALETTES[cfg.palette]
        self.instruction = ""
        self.episode_id = ""
        self.t = 0
        self._last_obs: Observation | None = None
        self._stage_start: np.ndarray | None = None
        self.next_start_xy: tuple[float, float] | None = None
        """Where the tool starts at the next reset (x, y in m, at the home height) instead of
        where the task puts it; used once, then cleared. The layout and the rest of the reset
        draw the same numbers either way (demonstrations from other start poses)."""
        self.next_cell: tuple[int, int] | None = None
        """The work-area cell to put the task's named object in at the next reset (a layout
        curriculum's choice; it must lie on the split's side of the held-out cells); used once,
        then cleared. None: the task draws the cell with the rest of the layout."""

    # --- set-up --------------------------------------------------------------------------
    def _solve_home(self) -> np.ndarray:
        cx, cy = self.cfg.home_xy or self.arm.work_center_xy
        target = np.array([cx, cy, HOME_HEIGHT_M[self.arm.name]])
        sol = self.kin.solve(target, self.kin.target_rotation(0.0), self.kin.q_home, max_iters=200)
        if sol.pos_err_m > 1e-3:
            if self.cfg.home_xy is not None:
                raise ConfigError(
                    "sim.home_xy",
                    f"{self.arm.name} cannot hold its tool, pointing down, at {target.tolist()} "
                    f"(IK error {sol.pos_err_m:.4f} m)",
                )
            raise RuntimeError(
                f"{self.arm.name}: home pose unreachable (error {sol.pos_err_m:.4f} m)"
            )
        return sol.q

    # --- episodes ------------------------------------------------------------------------
    def reset(self, seed: int | None = None, split: str | Split | None = None) -> Observation:
        """Start a new episode; the same ``seed`` (and split) gives the same episode."""
        rng = self._begin(seed, split)
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        if self.cfg.randomize:
            self._appearance.apply(rng)
        self.task.next_cell, self.next_cell = self.next_cell, None
        self.instruction = self.task.reset(d, rng, self.split)
        q0 = self.q_home.copy()
        start = self.task.start_tool_pos(d, rng)
        if self.next_start_xy is not None:
            x, y = self.next_start_xy
            start, self.next_start_xy = np.array([x, y, HOME_HEIGHT_M[self.arm.name]]), None
        if start is not None:
            q0 = self.kin.solve(start, self.kin.target_rotation(0.0), self.q_home, max_iters=100).q
        if self.cfg.randomize:
            q0 = np.clip(q0 + rng.normal(0.0, 0.03, size=q0.shape), self.kin.q_low, self.kin.q_high)
        self.controller.reset(d, q0, closure=0.0)
        mujoco.mj_forward(m, d)
        self.episode_id = rng.bytes(8).hex()
        self.t = 0
        self._stage_start = (
            self.task.stage_distances(self.data) if self.task.stage_weights else None
        )
        self._last_obs = self._observe()
        return self._last_obs

    def step(self, action: np.ndarray) -> StepResult:
        """Apply one action for one control period and observe the result."""
        applied = self.controller.apply(self.data, action)
        for _ in range(self.substeps):
            mujoco.mj_step(self.model, self.data)
        self.t += 1
        success = self.task.success(self.data)
        truncated = (not success) and self.t >= self.step_limit
        self._last_obs = self._observe()
        return StepResult(self._last_obs, float(success), success, truncated, success, applied)

    def success(self) -> bool:
        """The task's success predicate on the current state."""
        return self.task.success(self.data)

    def task_progress(self) -> float | None:
        """The episode's true progress now, in [0, 1] (``limbic.sim.tasks.task_progress``:
        1 on success, at most ``SHORT_OF_SUCCESS`` short of it); None for a task without stage distances.
        Privileged: for recordings that train the progress critic, never for a policy."""
        if self._stage_start is None:
            return None
        return task_progress(
            self.task.stage_distances(self.data),
            self._stage_start,
            self.task.stage_weights,
            self.task.success(self.data),
        )

    # --- observing ---------------------------------------------------------------------------
    def state(self) -> np.ndarray:
        """Proprioception: arm joint positions (rad) then gripper closure in [0, 1], float32."""
        q = self.data.qpos[self.kin.qpos_adr]
        return np.append(q, self.controller.gripper_closure(self.data)).astype(np.float32)

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the state vector's components."""
        return (*self.arm.arm_joints, "gripper")

    @property
    def layout_cell(self) -> tuple[int, int] | None:
        """The work-area grid cell the task's named object was placed in at the last reset
        (``limbic.sim.tasks.GRID`` cells a side; None before the first reset)."""
        return self.task.cell

    def goal_info(self) -> dict[str, Any]:
        """Privileged task state for scripted operators (never given to a learning policy)."""
        return self.task.goal_info(self.data)

    def __enter__(self) -> SimEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
