"""Action spaces and the controller that turns an action into servo targets.

Two action spaces, chosen by config:

* ``joint_delta``: ``[dq_1 .. dq_n (rad), gripper]`` — change of each arm joint's target.
* ``ee_delta``: ``[dx, dy, dz (m), (dyaw (rad)), gripper]`` — move of the tool frame, solved to
  joint targets by damped-least-squares IK on the same MuJoCo model.

The gripper component is a closure command in ``[0, 1]`` (0 open, 1 closed). Actions outside
the declared bounds are rejected by :meth:`ActionSpec.validate`, never wrapped or clipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from limbic.contracts import ActionKind, ActionSpec
from limbic.launch.config import require
from limbic.sim.arms import ArmSpec
from limbic.sim.kinematics import ArmKinematics

CONTROL_IK_ITERS = 4
"""IK iterations per control tick (warm-started; the closed loop absorbs any residual)."""

YAW_LIMIT_RAD = np.pi / 2
"""The tool's yaw target is kept within ±90° of its default (the jaws are symmetric)."""


@dataclass
class ActionConfig:
    """Which action space the arm takes."""

    kind: str = "ee_delta"
    """``ee_delta`` (tool-frame deltas through IK) or ``joint_delta`` (joint-target deltas)."""
    yaw: bool = False
    """Add a yaw-rate component to ``ee_delta`` (for objects at any orientation)."""

    def __post_init__(self) -> None:
        kinds = [k.value for k in ActionKind]
        require(self.kind in kinds, "action.kind", f"{self.kind!r} is not one of {kinds}")
        require(
            not (self.yaw and self.kind == "joint_delta"),
            "action.yaw",
            "yaw only applies to ee_delta",
        )


def make_action_spec(arm: ArmSpec, cfg: ActionConfig) -> ActionSpec:
    """The declared action space of ``arm`` under ``cfg``."""
    if cfg.kind == ActionKind.JOINT_DELTA.value:
        names = tuple(f"d_{j}" for j in arm.arm_joints) + ("gripper",)
        step = np.full(arm.n_joints, arm.max_joint_step_rad)
    else:
        names = ("dx", "dy", "dz") + (("dyaw",) if cfg.yaw else ()) + ("gripper",)
        step = np.full(3, arm.max_ee_step_m)
        if cfg.yaw:
            step = np.append(step, arm.max_yaw_step_rad)
    low = np.append(-step, 0.0)
    high = np.append(step, 1.0)
    return ActionSpec(ActionKind(cfg.kind), names, low, high)


class Controller:
    """Holds the arm's servo targets and moves them by one action per control tick."""

    def __init__(self, model: mujoco.MjModel, arm: ArmSpec, kin: ArmKinematics, spec: ActionSpec):
        self.model, self.arm, self.kin, self.spec = model, arm, kin, spec
        self.act_ids = np.array([model.actuator(a).id for a in arm.arm_actuators])
        self.grip_id = model.actuator(arm.gripper.actuator).id
        self.grip_qadr = model.joint(arm.gripper.joint).qposadr[0]
        cx, cy = arm.work_center_xy
        hx, hy = arm.work_half_extent_xy
        pad = 0.04 * arm.cube_half_m / 0.0125
        self.tool_low = np.array([cx - hx - pad, cy - hy - pad, arm.tool_z_limits[0]])
        self.tool_high = np.array([cx + hx + pad, cy + hy + pad, arm.tool_z_limits[1]])
        self.q_target = kin.q_home.copy()
        self.tool_target = np.zeros(3)
        self.yaw_target = 0.0
        self.closure = 0.0

    # --- state --------------------------------------------------------------------------
    def arm_q(self, data: mujoco.MjData) -> np.ndarray:
        """Measured arm joint positions (rad)."""
        return data.qpos[self.kin.qpos_adr].copy()

    def gripper_closure(self, data: mujoco.MjData) -> float:
        """Measured gripper closure in [0, 1]."""
        return self.arm.gripper.closure(float(data.qpos[self.grip_qadr]))

    def tool_pose(self, data: mujoco.MjData) -> tuple[np.ndarray, float]:
        """Measured tool position (m) and yaw (rad)."""
        pos = data.site_xpos[self.kin.site_id].copy()
        return pos, self.kin.yaw_of(data.site_xmat[self.kin.site_id].reshape(3, 3))

    def reset(self, data: mujoco.MjData, q: np.ndarray, closure: float = 0.0) -> None:
        """Put the arm at ``q`` with the servos holding it there."""
        data.qpos[self.kin.qpos_adr] = q
        data.qvel[self.kin.dof_adr] = 0.0
        self.q_target = np.asarray(q, dtype=float).copy()
        self.tool_target, rot = self.kin.fk(self.q_target)
        self.yaw_target = self.kin.yaw_of(rot)
        self.closure = float(closure)
        self._write_ctrl(data)

    # --- acting -------------------------------------------------------------------------
    def apply(self, data: mujoco.MjData, action: np.ndarray) -> np.ndarray:
        """Validate ``action``, update the servo targets, and return the action as applied."""
        action = self.spec.validate(action)
        if self.spec.kind is ActionKind.JOINT_DELTA:
            self._joint_delta(data, action[:-1].astype(float))
        else:
            self._ee_delta(data, action[:-1].astype(float))
        self.closure = float(action[-1])
        self._write_ctrl(data)
        return action

    def _joint_delta(self, data: mujoco.MjData, dq: np.ndarray) -> None:
        q_meas = self.arm_q(data)
        leash = self.arm.max_joint_step_rad
        # Targets stay within one step of the measured joints so a blocked arm does not wind up.
        base = q_meas + np.clip(self.q_target - q_meas, -leash, leash)
        self.q_target = np.clip(base + dq, self.kin.q_low, self.kin.q_high)
        self.tool_target, rot = self.kin.fk(self.q_target)
        self.yaw_target = self.kin.yaw_of(rot)

    def _ee_delta(self, data: mujoco.MjData, delta: np.ndarray) -> None:
        pos, _ = self.tool_pose(data)
        leash = self.arm.max_ee_step_m
        base = pos + np.clip(self.tool_target - pos, -leash, leash)
        self.tool_target = np.clip(base + delta[:3], self.tool_low, self.tool_high)
        if delta.shape[0] == 4:
            self.yaw_target = float(
                np.clip(self.yaw_target + delta[3], -YAW_LIMIT_RAD, YAW_LIMIT_RAD)
            )
        # Warm-started from the last target, a reachable goal converges in a few iterations;
        # the cap bounds the cost of unreachable ones (the best iterate is kept).
        rot = self.kin.target_rotation(self.yaw_target)
        sol = self.kin.solve(self.tool_target, rot, self.q_target, max_iters=CONTROL_IK_ITERS)
        self.q_target = sol.q

    def _write_ctrl(self, data: mujoco.MjData) -> None:
        data.ctrl[self.act_ids] = self.q_target
        data.ctrl[self.grip_id] = self.arm.gripper.ctrl(self.closure)

    # --- planning helpers (for scripted operators) ---------------------------------------
    def action_towards(
        self,
        data: mujoco.MjData,
        tool_pos: np.ndarray,
        yaw_rad: float,
        closure: float,
        speed: float = 1.0,
    ) -> np.ndarray:
        """The in-bounds action that moves the tool towards ``tool_pos``/``yaw_rad`` this tick.

        ``speed`` in (0, 1] scales the largest allowed step. Works in either action space.
        """
        scale = float(np.clip(speed, 1e-3, 1.0))
        pos, _ = self.tool_pose(data)
        base = pos + np.clip(
            self.tool_target - pos, -self.arm.max_ee_step_m, self.arm.max_ee_step_m
        )
        delta = np.asarray(tool_pos, float) - base
        step = self.arm.max_ee_step_m * scale
        norm = float(np.linalg.norm(delta))
        if norm > step:  # straight-line tool motion in both action spaces
            delta *= step / norm
        dyaw = (
            float(
                np.clip(
                    yaw_rad - self.yaw_target, -self.arm.max_yaw_step_rad, self.arm.max_yaw_step_rad
                )
            )
            * scale
        )
        if self.spec.kind is ActionKind.JOINT_DELTA:
            rot = self.kin.target_rotation(self.yaw_target + dyaw)
            goal = self.kin.solve(base + delta, rot, self.q_target, max_iters=CONTROL_IK_ITERS).q
            q_meas = self.arm_q(data)
            leash = self.arm.max_joint_step_rad
            dq = goal - (q_meas + np.clip(self.q_target - q_meas, -leash, leash))
            return self.spec.clip(np.append(dq, closure))
        parts = [delta]
        if self.spec.dim == 5:
            parts.append([dyaw])
        parts.append([closure])
        return self.spec.clip(np.concatenate(parts))
