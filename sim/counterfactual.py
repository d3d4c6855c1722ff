"""Counterfactual approach frames: an episode's frames before the grasp, rendered again with the
goal (pick-and-place's bowl) somewhere else.

Until the gripper closes on the object, what a demonstrator does depends on the object alone,
not on where the goal is. The layout sampler keeps the goal clear of the object in a small work
area, so in recorded layouts the goal's place predicts the object's, and a policy cloned from a
few demonstrations can follow the goal instead of the object (``limbic-bench cues`` measures
it). Re-rendering the approach with the goal placed independently of the object breaks that
correlation without new demonstrations: the actions stay the demonstrator's own, only what the
cameras saw before the grasp changes.

:class:`ApproachRecorder` keeps the simulator's state at every step of an episode as it is
recorded; :func:`goal_moved_observations` replays those states with the goal moved. Nothing is
stepped: each state is restored, the goal's mocap body moved, kinematics recomputed and the
views rendered, so the physics never sees the moved goal. (A frame rendered this way has its
kinematics recomputed for the restored state; the recorded frame was rendered from the last
physics substep's, so a handful of pixels along moving edges differ even where nothing moved.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import mujoco
import numpy as np

from limbic.contracts import Observation

_STATE = mujoco.mjtState.mjSTATE_INTEGRATION


def goal_body(env) -> str:
    """The mocap body that marks ``env``'s goal; raises ValueError when its task has none."""
    name = getattr(getattr(env, "task", None), "goal_mocap", None)
    if not name:
        task = getattr(getattr(env, "task", None), "name", type(env).__name__)
        raise ValueError(
            f"task {task!r} has no movable goal: moving the goal in the demonstrations' approach "
            "needs pick_place (its bowl)"
        )
    return name


APPROACH_ENDS = ("close", "lift")
"""Where an episode's approach ends (``ApproachRecorder``'s ``until``)."""


class ApproachRecorder:
    """Wraps an action source: keeps the sim state before each action and where the approach
    ends.

    ``until="close"`` (a demonstrator's episode): the approach ends with the first action that
    closes the gripper. ``until="lift"`` (an episode a policy played, perhaps with a watcher's
    corrections, whose first close may grasp air and be followed by another approach): it ends
    before the first frame with the object (pick-and-place's cube) raised ``lift_m`` above
    where it lay, and an episode that never lifts it is approach throughout; until the object
    is carried, where the goal is cannot matter to what anyone should do.

    ``recorder.wrap(act)`` returns an action source to record with; after the episode call
    :meth:`finish` once, with the env still at its last state.
    """

    def __init__(
        self,
        env,
        gripper_index: int = -1,
        closed_above: float = 0.5,
        until: str = "close",
        lift_m: float = 0.01,
    ):
        if until not in APPROACH_ENDS:
            raise ValueError(f"until: expected one of {APPROACH_ENDS}, got {until!r}")
        if until == "lift":
            goal_body(env)  # a task with a movable goal, hence an object to carry to it
        self.env = env
        self.gripper_index, self.closed_above = gripper_index, closed_above
        self.until, self.lift_m = until, lift_m
        self.states: list[np.ndarray] = []
        self.grasp_step: int | None = None
        """The first step whose action closes the gripper (None: it never did)."""
        self.lift_frame: int | None = None
        """``until="lift"``: the first frame with the object raised (None: never)."""
        self._rest_z: float | None = None

    def _snapshot(self) -> np.ndarray:
        model, data = self.env.model, self.env.data
        out = np.empty(mujoco.mj_stateSize(model, _STATE))
        mujoco.mj_getState(model, data, out, _STATE)
        if self.until == "lift" and self.lift_frame is None:
            z = float(self.env.goal_info()["cube"][2])
            if self._rest_z is None:
                self._rest_z = z
            elif z > self._rest_z + self.lift_m:
                self.lift_frame = len(self.states)
        return out

    def wrap(self, act: Callable) -> Callable:
        def recorded(*args):
            self.states.append(self._snapshot())
            action = np.asarray(act(*args))
            if self.grasp_step is None and action[self.gripper_index] > self.closed_above:
                self.grasp_step = len(self.states) - 1
            return action

        return recorded

    def finish(self) -> None:
        """Keep the state after the last step (the episode's last frame)."""
        self.states.append(self._snapshot())

    @property
    def approach_frames(self) -> int:
        """Frames of the approach: up to and including the one the first close acts on
        (``until="close"``), or those before the object is first raised (``until="lift"``)."""
        if self.until == "lift":
            return self.lift_frame if self.lift_frame is not None else len(self.states)
        last = self.grasp_step if self.grasp_step is not None else len(self.states) - 1
        return last + 1


def sample_goal_xy(env, rng: np.random.Generator, margin: float = 0.02) -> np.ndarray:
    """A goal position anywhere in the work area (``margin`` m from its edge, scaled like the
    task's objects), drawn without regard to where the object is."""
    cx, cy = env.arm.work_center_xy
    hx, hy = env.arm.work_half_extent_xy
    m = margin * env.task.scale
    return np.array([rng.uniform(cx - hx + m, cx + hx - m), rng.uniform(cy - hy + m, cy + hy - m)])


def show_goal_at(env, goal_xy: np.ndarray) -> Observation:
    """Move the goal's mocap body to ``goal_xy`` (its height stays), recompute the kinematics
    and render the scene anew; nothing is stepped."""
    name = goal_body(env)
    pos = env.data.mocap_pos[env.model.body(name).mocapid[0]].copy()
    pos[:2] = goal_xy
    env.task.place_mocap(env.data, name, pos)
    mujoco.mj_forward(env.model, env.data)
    return env.observe_again()


def goal_moved_observations(
    env, recorder: ApproachRecorder, goal_xy: np.ndarray
) -> list[Observation]:
    """The approach frames of the recorded episode, rendered with the goal at ``goal_xy``.

    Returns one observation per approach frame (``recorder.approach_frames``); the env is left
    at the episode's last state, as the recording left it.
    """
    model, data = env.model, env.data
    out = []
    try:
        for t in range(recorder.approach_frames):
            mujoco.mj_setState(model, data, recorder.states[t], _STATE)
            out.append(dataclasses.replace(show_goal_at(env, goal_xy), step=t))
    finally:
        mujoco.mj_setState(model, data, recorder.states[-1], _STATE)
        mujoco.mj_forward(model, data)
        env.observe_again()
    return out
