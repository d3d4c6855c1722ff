"""The scripted expert: solves every task on every arm from privileged simulator state.

It is also the simulated human: later it drives demonstrations and interventions. Knobs make
it imperfect on purpose, so recordings include slow, partial and failed episodes (which the
progress critic needs). Each episode draws a *mode* — ``expert``, ``slow``, ``partial`` or
``failed`` — and every action may carry Gaussian noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from limbic.launch.config import require
from limbic.sim.env import SimEnv

JAW_MARGIN_M = 0.0095
"""Gap the expert leaves between a fixed jaw and the cube it descends around (at the SO-101's
cube size; scaled with the cube). Closing, the moving jaw slides the cube across the gap onto
the fixed jaw. Measured by moving the expert's grasp point along the jaws' axis (16 training
layouts and 10 next to the arm's base): from a 1.5 mm gap, the cube was still lifted with the
tool 40 mm further back (the fixed jaw farther off), and 2 mm further in (25 of 26), but seldom
4 mm further in (3 of 26), where the fixed jaw lands on the cube. A 9.5 mm gap leaves room on
both sides, so a grasp a few millimetres off either way still holds."""


EMPTY_CLOSURE = 0.9
"""Measured gripper closure above which the jaws hold nothing (a held cube stops them near 0.73
on the SO-101 and 0.59 on the Panda)."""


REACH = 1.6
"""How far across from the grasp point, in half-widths of a cube, an anticipating watcher lets
the jaws start to close (above it: one half-width). Traced on a cloned policy (40 held-out
episodes, every close commanded with the jaws open), the cube was held eight ticks later after
all 11 closes within 15 mm across, 4 of 5 within 15-20 mm, 2 of 5 within 20-25 mm, 5 of 122
beyond, and none of the 8 closes 10 mm or more above the grasp point."""

STALL_PATIENCE = 4
"""A watcher's patience with an arm that makes no progress, in multiples of its patience with
one moving the wrong way."""


class ExpertMode(StrEnum):
    """How the expert behaves for a whole episode."""

    EXPERT = "expert"
    SLOW = "slow"
    PARTIAL = "partial"
    FAILED = "failed"


@dataclass
class ExpertConfig:
    """The expert's suboptimality knobs (all zero: a clean, fast expert)."""

    noise_std: float = 0.0
    """Gaussian action noise, as a fraction of each component's bound."""
    speed: float = 1.0
    """Fraction of the arm's largest step the expert uses."""
    p_slow: float = 0.0
    """Probability of a slow, hesitant episode."""
    p_partial: float = 0.0
    """Probability of an episode abandoned part-way."""
    p_fail: float = 0.0
    """Probability of an episode that completes the motion with a wrong goal (a failure)."""
    jaw_gap_m: float = JAW_MARGIN_M
    """Gap left between a one-sided gripper's fixed jaw and the cube it grasps (default
    :data:`JAW_MARGIN_M`). In the learning loop the watching human leaves the demonstrator's gap."""

    def __post_init__(self) -> None:
        require(
            0.0 <= self.noise_std <= 1.0,
            "expert.noise_std",
            f"must be in [0, 1], got {self.noise_std}",
        )
        require(
            0.05 <= self.speed <= 1.0, "expert.speed", f"must be in [0.05, 1], got {self.speed}"
        )
        for name in ("p_slow", "p_partial", "p_fail"):
            v = getattr(self, name)
            require(0.0 <= v <= 1.0, f"expert.{name}", f"must be a probability, got {v}")
        require(
            0.0 <= self.jaw_gap_m <= 0.05,
            "expert.jaw_gap_m",
            f"must be in [0, 0.05] m, got {self.jaw_gap_m}",
        )
        total = self.p_slow + self.p_partial + self.p_fail
        require(total <= 1.0, "expert", f"p_slow + p_partial + p_fail must be <= 1, got {total}")


def draw_mode(cfg: ExpertConfig, rng: np.random.Generator) -> ExpertMode:
    """One episode's mode, drawn with the config's probabilities (one uniform draw)."""
    u = rng.uniform()
    if u < cfg.p_fail:
        return ExpertMode.FAILED
    if u < cfg.p_fail + cfg.p_partial:
        return ExpertMode.PARTIAL
    if u < cfg.p_fail + cfg.p_partial + cfg.p_slow:
        return ExpertMode.SLOW
    return ExpertMode.EXPERT


def episode_plan(cfg: ExpertConfig, rng: np.random.Generator) -> tuple[ExpertMode, int, float]:
    """One episode's mode, the phase a partial episode stops at (99: none) and its speed."""
    mode = draw_mode(cfg, rng)
    stop_phase = int(rng.integers(1, 4)) if mode is ExpertMode.PARTIAL else 99
    speed = cfg.speed * (rng.uniform(0.3, 0.6) if mode is ExpertMode.SLOW else 1.0)
    return mode, stop_phase, speed


@dataclass
class Waypoint:
    """Where the tool should go this tick."""

    pos: np.ndarray
    yaw: float
    closure: float
    speed: float = 1.0


class ScriptedExpert:
    """Closed-loop scripted operator for a :class:`SimEnv`; call :meth:`reset` then :meth:`act` per step."""

    def __init__(self, env: SimEnv, cfg: ExpertConfig | None = None, seed: int | None = None):
        self.env = env
        self.cfg = cfg or ExpertConfig()
        self.rng = np.random.default_rng(seed)
        self.half = env.arm.cube_half_m
        self.scale = self.half / 0.0125
        self.hover = 0.05 * self.scale
        self.tol = 0.004 * self.scale
        self.use_yaw = env.action_spec.dim == 5 and env.action_spec.names[3] == "dyaw"
        jaw = env.arm.fixed_jaw_geom
        self.fixed_jaw = env.model.geom(jaw).id if jaw else -1
        self.mode = ExpertMode.EXPERT
        self.reset()

    def reset(self) -> ExpertMode:
        """Start a new episode: draw the mode and clear the plan."""
        self.mode, self.stop_phase, self.speed = episode_plan(self.cfg, self.rng)
        self.phase = 0
        self.timer = 0
        self.fail_offset = self._random_offset(2.2, 3.5)
        self.partial_fraction = float(self.rng.uniform(0.25, 0.75))
        self.start_distance: float | None = None
        self.idle_pos: np.ndarray | None = None
        self._watch_held = False
        self._watch_reset()
        return self.mode

    def _random_offset(self, lo: float, hi: float) -> np.ndarray:
        angle = self.rng.uniform(0, 2 * np.pi)
        return np.array([np.cos(angle), np.sin(angle)]) * self.rng.uniform(lo, hi) * 2 * self.half

    # --- acting --------------------------------------------------------------------------
    def act(self) -> np.ndarray:
        """The expert's action for the env's current state, inside the declared bounds."""
        env = self.env
        if self.phase >= self.stop_phase:
            wp = self._idle()
        else:
            wp = getattr(self, f"_plan_{env.task.name}")()
        speed = self.speed * wp.speed
        if self.mode is ExpertMode.SLOW and self.rng.uniform() < 0.15:
            speed = 0.05  # hesitation
        action = env.controller.action_towards(env.data, wp.pos, wp.yaw, wp.closure, speed)
        if self.cfg.noise_std > 0:
            spec = env.action_spec
            noise = self.rng.normal(0.0, self.cfg.noise_std, size=spec.dim) * spec.high
            noise[-1] = 0.0
            action = spec.clip(action + noise)
        return action.astype(np.float32)

    def _tool(self) -> np.ndarray:
        return self.env.controller.tool_pose(self.env.data)[0]

    def _advance(self, done: bool) -> None:
        self.timer += 1
        if done:
            self.phase += 1
            self.timer = 0

    def _idle(self) -> Waypoint:
        """A partial episode: drift slowly around where the expert gave up."""
        if self.idle_pos is None:
            self.idle_pos = self._tool() + np.array([0.0, 0.0, self.hover * 0.5])
        self.idle_pos = self.idle_pos + self.rng.normal(0.0, 0.002 * self.scale, 3)
        closure = self.env.controller.closure
        return Waypoint(self.idle_pos, 0.0, closure, 0.3)

    # --- reach ---------------------------------------------------------------------------
    def _plan_reach(self) -> Waypoint:
        env = self.env
        if self.mode is ExpertMode.FAILED:
            target = env.data.mocap_pos[env.model.body("distractor").mocapid[0]].copy()
        else:
            target = env.goal_info()["target"]
        tool = self._tool()
        dist = float(np.linalg.norm(tool - target))
        if self.start_distance is None:
            self.start_distance = dist
        give_up_at = max(
            (1 - self.partial_fraction) * self.start_distance, 2 * self.env.task.tolerance_m
        )
        if self.mode is ExpertMode.PARTIAL and dist - self.env.arm.max_ee_step_m < give_up_at:
            self.stop_phase = 0  # give up part-way, before the next step could arrive
            return self._idle()
        self._advance(self.phase == 0 and dist < 3 * self.tol)
        return Waypoint(target, 0.0, 0.0)

    # --- push ----------------------------------------------------------------------------
    def _plan_push(self) -> Waypoint:
        g = self.env.goal_info()
        cube, zone = g["cube"], g["zone"]
        goal_xy = zone[:2] + (self.fail_offset if self.mode is ExpertMode.FAILED else 0.0)
        to_goal = goal_xy - cube[:2]
        dist = float(np.linalg.norm(to_goal))
        direction = to_goal / max(dist, 1e-6)
        contact = self.half + 0.008 * self.scale
        behind = cube[:2] - direction * (contact + 0.012 * self.scale)
        push_z = self.env.arm.fingertip_drop_m + 0.003
        tool = self._tool()
        if self.phase == 0:  # above the point behind the cube
            target = np.array([*behind, push_z + self.hover])
            self._advance(np.linalg.norm(tool[:2] - behind) < self.tol)
            return Waypoint(target, 0.0, 1.0)
        if self.phase == 1:  # down beside the table
            target = np.array([*behind, push_z])
            self._advance(
                abs(tool[2] - push_z) < self.tol
                and np.linalg.norm(tool[:2] - behind) < 2 * self.tol
            )
            return Waypoint(target, 0.0, 1.0)
        if self.phase == 2:  # push through the cube's centre along the line to the goal
            rel = tool[:2] - cube[:2]
            lateral = abs(rel[0] * direction[1] - rel[1] * direction[0])
            ahead = float(rel @ direction)
            if lateral > 0.6 * self.half or ahead > -0.5 * self.half:
                self.phase, self.timer = 0, 0  # lost the cube: lift and line up again
                return Waypoint(np.array([*tool[:2], push_z + self.hover]), 0.0, 1.0)
            step = min(dist, 0.03 * self.scale)
            target_xy = cube[:2] - direction * contact + direction * step
            self._advance(dist < 0.3 * self.half)
            return Waypoint(np.array([*target_xy, push_z]), 0.0, 1.0, 0.6)
        target = np.array([*tool[:2], push_z + self.hover])  # done: back off upwards
        return Waypoint(target, 0.0, 1.0)

    def _jaw_clearance_shift(self, cube_yaw: float) -> np.ndarray:
        """Where to put the tool, relative to the cube's centre, so a fixed jaw clears the cube.

        A one-sided gripper's fixed jaw sits about a cube's half-width from the tool site. A
        cube turned relative to the jaws is wider across them (``half * (cos + sin)`` of the
        relative yaw), so a grasp centred on the cube lands that jaw on the cube's top. Shift
        the grasp away from the fixed jaw by the overlap plus a margin; the moving jaw opens
        wide, and closing pushes the cube flat against the fixed jaw. Zero for symmetric grippers.
        """
        if self.fixed_jaw < 0:
            return np.zeros(2)
        data = self.env.data
        site = data.site_xpos[self.env.controller.kin.site_id][:2]
        away = site - data.geom_xpos[self.fixed_jaw][:2]  # from the fixed jaw towards the site
        dist = float(np.linalg.norm(away))
        clearance = dist - float(self.env.model.geom_size[self.fixed_jaw][0])
        tool_yaw = self.env.controller.tool_pose(data)[1] if self.use_yaw else 0.0
        rel = abs(cube_yaw - tool_yaw) % (np.pi / 2)
        width = self.half * (np.cos(rel) + np.sin(rel))
        overlap = width + self.cfg.jaw_gap_m * self.scale - clearance
        return -away / max(dist, 1e-9) * max(0.0, overlap)

    # --- pick and place, stack -------------------------------------------------------------
    def _pick_place_goal(self) -> tuple[np.ndarray, float, np.ndarray, float, float]:
        """The cube, its yaw, and where it goes: ``(cube, cube_yaw, place_xy, place_z, place_yaw)``."""
        g = self.env.goal_info()
        if self.env.task.name == "stack":
            base = g["base"]
            place_z = base[2] + 2 * self.half + 0.003 * self.scale
            return g["cube"], float(g["cube_yaw"]), base[:2], place_z, float(g["base_yaw"])
        place_z = float(g["drop_height"]) - 1.2 * self.half + 0.004 * self.scale
        return g["cube"], float(g["cube_yaw"]), g["bowl"][:2], place_z, 0.0

    def _plan_pick_place(self) -> Waypoint:
        return self._pick_and_place(*self._pick_place_goal())

    def _plan_stack(self) -> Waypoint:
        return self._pick_and_place(*self._pick_place_goal())

    def _grasp_point(self, cube: np.ndarray, cube_yaw: float) -> tuple[np.ndarray, float]:
        """Where the tool grasps the cube: ``(xy, z)``."""
        grasp_z = max(
            cube[2] + self.half - self.env.arm.grasp_depth_m, self.env.arm.tool_z_limits[0] + 0.002
        )
        return cube[:2] + self._jaw_clearance_shift(cube_yaw), grasp_z

    def grasp_target(self) -> np.ndarray:
        """Where the tool must be, now, to grasp the task's object: ``[x, y, z]`` (m), the
        object's centre moved clear of a one-sided gripper's fixed jaw (``jaw_gap_m``) and
        down to the grasp depth. Pick and place, stack; ValueError for other tasks."""
        if not self.judges_mistakes:
            raise ValueError(f"task {self.env.task.name!r} has no object to grasp")
        cube, cube_yaw, *_ = self._pick_place_goal()
        xy, z = self._grasp_point(cube, cube_yaw)
        return np.array([*xy, z], dtype=np.float64)

    def _over_work_area(self, xy: np.ndarray) -> np.ndarray:
        """``xy`` moved inside the work area along x, where a lift can reach its carry height."""
        cx, _ = self.env.arm.work_center_xy
        hx, _ = self.env.arm.work_half_extent_xy
        return np.array([np.clip(xy[0], cx - hx, cx + hx), xy[1]])

    def _holds(self, cube: np.ndarray, tool: np.ndarray) -> bool:
        return bool(np.linalg.norm(cube - tool) < 2.0 * self.half and cube[2] > 1.3 * self.half)

    # --- watching someone else drive ----------------------------------------------------------
    @property
    def judges_mistakes(self) -> bool:
        """Whether :meth:`mistake` knows this task (the pick-and-place family)."""
        return self.env.task.name in ("pick_place", "stack")

    def mistake(
        self,
        action: np.ndarray,
        patience: int,
        anticipate: bool = False,
        stall_near: bool = False,
    ) -> str | None:
        """What a human watching the arm would stop now, given the action about to run, or None.

        It judges outcomes a person can see, not style: the arm may take its own path to the
        cube and close wherever its jaws will catch it. Immediate: the jaws shut on nothing
        (the gripper closes fully, which a held cube prevents), the gripper closed high above
        the cube (shut early, or lifting without it), or a held cube let go away from the goal
        (more than three half-widths of a cube off). After ``patience`` ticks in a row: moving
        away from the cube, or carrying it away from the goal; after ``STALL_PATIENCE`` times
        that with no progress towards either while still far from it: stalled. With
        ``anticipate`` it also stops a grasp before it happens: the jaws, still open, commanded
        shut out of reach of the cube (more than ``REACH`` half-widths of a cube off the grasp
        point across, or one above it). With ``stall_near`` a stall before the grasp counts
        near the cube as well, progress being measured to the grasp point in 3-D (an arm
        hovering beside the cube, or above it without coming down). Pick and place, stack.
        """
        require(
            self.judges_mistakes,
            "takeover.rule",
            f"mistakes cannot judge task {self.env.task.name!r}",
        )
        cube, cube_yaw, place_xy, _, _ = self._pick_place_goal()
        tool = self._tool()
        closing = float(action[-1]) >= 0.5
        closed = self.env.controller.closure >= 0.5
        held = self._holds(cube, tool)
        if held != self._watch_held:  # a new leg: the distance is to another place
            self._watch_held = held
            self._watch_reset()
        if held:
            dist = float(np.linalg.norm(tool[:2] - place_xy))
            if not closing and dist > 3 * self.half:
                return self._judged("let go away from the goal")
            away, stalled = "carrying away from the goal", "stalled away from the goal"
            progress, watch_near = dist, False
        else:
            if closed and self.env.controller.gripper_closure(self.env.data) > EMPTY_CLOSURE:
                return self._judged("jaws shut on nothing")
            if closed and closing and tool[2] > cube[2] + 2.5 * self.half:
                return self._judged("gripper closed above the cube")
            grasp_xy, grasp_z = self._grasp_point(cube, cube_yaw)
            dist = float(np.linalg.norm(tool[:2] - grasp_xy))
            if anticipate and closing and not closed:
                if dist > REACH * self.half or tool[2] > grasp_z + self.half:
                    return self._judged("closing out of reach")
            away, stalled = "moving away from the cube", "stalled away from the cube"
            # near the cube, coming down is progress too
            progress = float(np.hypot(dist, max(0.0, tool[2] - grasp_z))) if stall_near else dist
            watch_near = stall_near
        slack = 0.001 * self.scale
        far = dist > 2 * self.half
        self._watch_streak = (
            self._watch_streak + 1 if far and dist > self._watch_prev + slack else 0
        )
        self._watch_prev = dist
        if progress < self._watch_best - slack:
            self._watch_best, self._watch_idle = progress, 0
        else:
            self._watch_idle += 1
        if self._watch_streak >= patience:
            return self._judged(away)
        if (far or watch_near) and self._watch_idle >= STALL_PATIENCE * patience:
            return self._judged(stalled if far else "stalled beside the cube")
        return None

    def _judged(self, reason: str) -> str:
        self._watch_reset()
        return reason

    def _watch_reset(self) -> None:
        self._watch_streak = self._watch_idle = 0
        self._watch_prev = self._watch_best = np.inf

    def resume(self) -> None:
        """Take over from someone else: pick the plan's phase from the scene, not from memory
        (carry a held cube on, else start over above the cube)."""
        if not self.judges_mistakes:
            return
        cube = self._pick_place_goal()[0]
        self.phase = 3 if self._holds(cube, self._tool()) else 0
        self.timer = 0

    def _pick_and_place(
        self,
        cube: np.ndarray,
        cube_yaw: float,
        place_xy: np.ndarray,
        place_z: float,
        place_yaw: float,
    ) -> Waypoint:
        tool = self._tool()
        grasp_yaw = cube_yaw if self.use_yaw else 0.0
        carry_z = max(place_z, self.half) + self.hover
        if self.mode is ExpertMode.FAILED:
            place_xy = place_xy + self.fail_offset
        grasp_xy, grasp_z = self._grasp_point(cube, cube_yaw)
        held = self._holds(cube, tool)
        if self.phase < 3 and held:  # taking over from someone who already lifted it: carry on
            self.phase, self.timer = 3, 0
        p = self.phase
        if p == 0:  # hover above the cube, open
            target = np.array([*grasp_xy, cube[2] + self.hover])
            self._advance(
                np.linalg.norm(tool[:2] - grasp_xy) < self.tol
                and abs(tool[2] - target[2]) < 3 * self.tol
            )
            return Waypoint(target, grasp_yaw, 0.0)
        if p == 1:  # straight down around it
            target = np.array([*grasp_xy, grasp_z])
            ok = (
                abs(tool[2] - grasp_z) < self.tol and np.linalg.norm(tool[:2] - grasp_xy) < self.tol
            )
            self._advance(ok or self.timer > 25)
            return Waypoint(target, grasp_yaw, 0.0, 0.7)
        if p == 2:  # close and let the fingers settle
            target = np.array([*grasp_xy, grasp_z])
            self._advance(self.timer >= 4)
            return Waypoint(target, grasp_yaw, 1.0)
        if p == 3:  # lift; if the cube stayed behind, start over
            target = np.array([*self._over_work_area(tool[:2]), carry_z])
            if tool[2] > cube[2] + 2.5 * self.half and not held:
                self.phase, self.timer = 0, 0
                return Waypoint(target, grasp_yaw, 0.0)
            self._advance(abs(tool[2] - carry_z) < 3 * self.tol)
            return Waypoint(target, grasp_yaw, 1.0)
        if p in (4, 5) and not held:  # dropped on the way: go back for it
            self.phase, self.timer = 0, 0
            return Waypoint(np.array([*tool[:2], carry_z]), grasp_yaw, 0.0)
        yaw = place_yaw if self.use_yaw else grasp_yaw
        if p == 4:  # carry above the goal
            target = np.array([*place_xy, carry_z])
            self._advance(np.linalg.norm(tool[:2] - place_xy) < self.tol)
            return Waypoint(target, yaw, 1.0)
        if p == 5:  # lower onto it
            target = np.array([*place_xy, place_z])
            self._advance(abs(tool[2] - place_z) < self.tol or self.timer > 20)
            return Waypoint(target, yaw, 1.0, 0.6)
        if p == 6:  # let go
            target = np.array([*place_xy, place_z])
            self._advance(self.timer >= 3)
            return Waypoint(target, yaw, 0.0)
        return Waypoint(np.array([*place_xy, carry_z]), yaw, 0.0)  # back off
