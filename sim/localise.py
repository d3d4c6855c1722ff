"""Views labelled with where the object is: training data for a policy's pre-trained localiser.

A policy cloned from a few demonstrations sees the object at a few places only and fits a
lookup of them (README, "Learning"). Where the object lies relative to the tool, though, can
be learned from many more views than there are demonstrations, because in simulation the
answer is known for any view. :func:`localiser_views` resets the task on fresh layouts of one
split, lets the jaws open with a few still steps (keeping the scene at each), then puts the tool
at random places over the work area (pointing down, the jaws open or opening, as in an episode's
first steps) and renders every camera view, labelled with the offset from the tool to the
task's object: ``(object - tool) / max_ee_step_m``, so one unit is one step of the widest
end-effector motion. The poses are not stepped to: each is set through inverse kinematics, the
kinematics recomputed and the views rendered.

The labels are privileged simulator state. They train a perception module before any
demonstration is cloned (``policy.agent.waypoint_source=pretrained``); the policy itself never
reads them.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterator
from dataclasses import dataclass

import mujoco
import numpy as np

from limbic.contracts import Observation
from limbic.sim.tasks import COLORS, HELDOUT_COLOR_MARGIN, HELDOUT_COLORS

OPENING_STEPS = 6
"""Still steps with the jaws commanded open after a reset: by then they are open."""
OBJECT_KEYS = ("cube", "target")
"""Keys of ``goal_info`` naming the object the tool goes to first, in order of preference."""
OBJECT_OFFSET = slice(0, 3)
"""Where a label (:func:`localiser_views`) keeps the offset to the object; the goal's follows."""
GOAL_KEYS = ("bowl", "zone", "base")
"""Keys of ``goal_info`` naming where the task takes the object (pick-and-place's bowl, push's
zone, stack's base cube)."""
TARGETS = ("object", "grasp")
"""What a label's first offset points to (:func:`localiser_views`): the object's centre, or
where the tool grasps it (:meth:`~limbic.sim.expert.ScriptedExpert.grasp_target`)."""
COLOR_MODES = ("task", "random")
"""How :func:`localiser_views` colours the objects: as the split's reset does, or at random
(never within :data:`~limbic.sim.tasks.HELDOUT_COLOR_MARGIN` of a held-out colour; every
training colour is at least 0.5 from them)."""


def random_color(rng: np.random.Generator) -> np.ndarray:
    """An RGB colour of random hue, saturation 0.5-1 and value 0.5-1, never within
    :data:`HELDOUT_COLOR_MARGIN` of a held-out colour, so the held-out split's colours stay
    unseen."""
    heldout = np.array([COLORS[c] for c in HELDOUT_COLORS])
    while True:
        hsv = rng.uniform(0.0, 1.0), rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0)
        rgb = np.array(colorsys.hsv_to_rgb(*hsv))
        if np.linalg.norm(heldout - rgb, axis=1).min() >= HELDOUT_COLOR_MARGIN:
            return rgb


@dataclass(frozen=True)
class PoseRange:
    """Where the tool is put: anywhere over the work area (grown by ``pad_m`` on each side), at
    heights from ``z_low_m`` to ``z_high_m``; never within ``clear_m`` above the object's top
    when over it (a rendered tool inside the object would show what no episode does).

    A share ``near_share`` of the poses is drawn around the object instead: within ``near_m``
    of it along x and along y, at heights up to ``near_z_high_m``. That is where an episode's
    approach ends and where a few millimetres decide the grasp; poses drawn uniformly over the
    work area seldom fall there."""

    pad_m: float = 0.02
    z_low_m: float = 0.015
    z_high_m: float = 0.11
    clear_m: float = 0.01
    near_share: float = 0.0
    near_m: float = 0.05
    near_z_high_m: float = 0.06

    def __post_init__(self) -> None:
        if not 0.0 <= self.near_share <= 1.0:
            raise ValueError(f"near_share must be in [0, 1], got {self.near_share}")
        if self.near_m <= 0 or self.near_z_high_m < self.z_low_m:
            raise ValueError(
                f"near_m must be > 0 and near_z_high_m >= z_low_m, got {self.near_m} and "
                f"{self.near_z_high_m} (z_low_m {self.z_low_m})"
            )


def _named_position(env, keys: tuple[str, ...], what: str) -> np.ndarray:
    info = env.goal_info()
    for key in keys:
        if key in info:
            return np.asarray(info[key], np.float64)
    raise ValueError(
        f"task {env.task.name!r} names no {what} to localise "
        f"(goal_info has {sorted(info)}, expected one of {list(keys)})"
    )


def object_position(env) -> np.ndarray:
    """The position of the object the task's tool goes to first (pick-and-place's and push's
    cube, reach's named ball); ValueError for a task without one."""
    return _named_position(env, OBJECT_KEYS, "single object")


def goal_position(env) -> np.ndarray:
    """Where the task takes its object (:data:`GOAL_KEYS`); ValueError for a task without one."""
    return _named_position(env, GOAL_KEYS, "goal")


def grasp_finder(env, jaw_gap_m: float | None = None):
    """A scripted expert of ``env`` that says where its tool grasps the object
    (:meth:`~limbic.sim.expert.ScriptedExpert.grasp_target`), with that gap at the fixed jaw
    (None: the default); ValueError for a task without an object to grasp."""
    from limbic.sim.expert import ExpertConfig, ScriptedExpert

    cfg = ExpertConfig() if jaw_gap_m is None else ExpertConfig(jaw_gap_m=jaw_gap_m)
    finder = ScriptedExpert(env, cfg, seed=0)
    if not finder.judges_mistakes:
        raise ValueError(
            f"task {env.task.name!r} has no object to grasp (a grasp target needs pick_place "
            "or stack)"
        )
    return finder


def _tool_target(env, obj: np.ndarray, rng: np.random.Generator, poses: PoseRange) -> np.ndarray:
    cx, cy = env.arm.work_center_xy
    hx, hy = env.arm.work_half_extent_xy
    scale = getattr(env.task, "scale", 1.0)
    hx, hy = hx + poses.pad_m * scale, hy + poses.pad_m * scale
    near = poses.near_share > 0 and rng.random() < poses.near_share
    if near:
        xy = obj[:2] + rng.uniform(-poses.near_m, poses.near_m, 2) * scale
    else:
        xy = np.array([rng.uniform(cx - hx, cx + hx), rng.uniform(cy - hy, cy + hy)])
    z_high = (poses.near_z_high_m if near else poses.z_high_m) * scale
    z_low = poses.z_low_m * scale
    if np.linalg.norm(xy - obj[:2]) < 2.5 * env.arm.cube_half_m * scale:
        z_low = max(z_low, obj[2] + env.arm.cube_half_m * scale + poses.clear_m * scale)
    z = rng.uniform(z_low, max(z_low, z_high))
    return np.array([*xy, z])


def localiser_views(
    env,
    layouts: int,
    poses_per_layout: int,
    seed: int,
    split: str = "train",
    poses: PoseRange = PoseRange(),
    colors: str = "task",
    goal: bool = False,
    target: str = "object",
    jaw_gap_m: float | None = None,
) -> Iterator[tuple[Observation, np.ndarray]]:
    """``(observation, label float32[3])`` for ``poses_per_layout`` tool poses on each of
    ``layouts`` layouts (reset seeds ``seed, seed + 1, ...`` of ``split``); with ``goal``,
    ``label float32[6]``: the object's offset, then the goal's (:func:`goal_position`), in the
    same units.

    ``colors="random"`` gives every coloured object of each layout a random colour
    (:func:`random_color`) in place of the split's palette: the localiser then cannot lean on
    the few colours the training split names.

    ``target="grasp"`` labels the offset to where the tool grasps the object instead of to its
    centre: clear of a one-sided gripper's fixed jaw by ``jaw_gap_m`` (None: the scripted
    expert's default) and at the grasp depth, worked out for the arm as posed in the view, as
    the expert works it out on its way (pick and place, stack).

    The label is ``(object - tool) / env.arm.max_ee_step_m``. Poses the arm cannot reach within
    1 mm are skipped, so a layout can give fewer. ``env`` is left at the last pose rendered:
    reset it before stepping it again.
    """
    if layouts < 1 or poses_per_layout < 1:
        raise ValueError(
            f"layouts and poses_per_layout must be >= 1, got {layouts} and {poses_per_layout}"
        )
    if colors not in COLOR_MODES:
        raise ValueError(f"colors must be one of {list(COLOR_MODES)}, got {colors!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {list(TARGETS)}, got {target!r}")
    grasp = grasp_finder(env, jaw_gap_m) if target == "grasp" else None
    rng = np.random.default_rng([seed, 7])
    color_rng = np.random.default_rng([seed, 11])
    kin, step = env.kin, env.arm.max_ee_step_m
    down = kin.target_rotation(0.0)
    for i in range(layouts):
        env.reset(seed=seed + i, split=split)
        if colors == "random":
            for geom in env.task.colors:
                env.model.geom(geom).rgba[:3] = random_color(color_rng)
        # an episode starts with the jaws part closed and opens them over its first steps:
        # keep the scene after 0 .. OPENING_STEPS still steps with the jaws commanded open
        opening = [env.data.qpos.copy()]
        for _ in range(OPENING_STEPS):
            env.step(np.zeros(env.action_spec.dim))
            opening.append(env.data.qpos.copy())
        obj = object_position(env)
        targets = [obj, goal_position(env)] if goal else [obj]
        q = env.controller.arm_q(env.data)
        for _ in range(poses_per_layout):
            target = _tool_target(env, obj, rng, poses)
            sol = kin.solve(target, down, q, max_iters=100)
            if sol.pos_err_m > 1e-3:
                continue
            # half the views with the jaws open, the rest anywhere on their way there
            k = min(int(rng.integers(0, 2 * OPENING_STEPS)), OPENING_STEPS)
            env.data.qpos[:] = opening[k]
            env.controller.reset(env.data, sol.q, closure=0.0)
            mujoco.mj_forward(env.model, env.data)
            tool = env.data.site_xpos[kin.site_id]
            if grasp is not None:  # the grasp point moves with the jaws: work it out here
                targets[0] = grasp.grasp_target()
            label = np.concatenate([(t - tool) / step for t in targets]).astype(np.float32)
            yield env.observe_again(), label
