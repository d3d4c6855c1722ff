"""Forward and inverse kinematics of an arm's tool frame on its own MuJoCo model.

IK is damped least squares on MuJoCo's site Jacobian, position and orientation together,
with a null-space pull towards the home posture for redundant arms. It runs on a private
``MjData`` so solving never disturbs the simulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np

from limbic.sim.arms import ArmSpec

ROT_WEIGHT_M_PER_RAD = 0.15
"""How many metres of position error one radian of orientation error is worth when ranking solutions."""

ORIENTATION_DAMPING = 0.05
"""Damping of the orientation task: keeps the tool from flipping near orientation singularities."""


_EYE3 = np.eye(3)


def orientation_error(rot: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rotation vector (world frame, small-angle) that turns ``rot`` towards ``target``.

    Half the sum of the cross products of matching columns, written out because
    ``np.cross`` costs more than the arithmetic at this size.
    """
    a, b = rot, target
    return 0.5 * np.array(
        [
            float(np.dot(a[1], b[2]) - np.dot(a[2], b[1])),
            float(np.dot(a[2], b[0]) - np.dot(a[0], b[2])),
            float(np.dot(a[0], b[1]) - np.dot(a[1], b[0])),
        ]
    )


def inv3(m: np.ndarray) -> np.ndarray:
    """Inverse of a 3x3 matrix by its adjugate (``np.linalg.inv`` costs ~10x more at this size)."""
    (a, b, c), (d, e, f), (g, h, i) = m.tolist()
    co_a, co_b, co_c = e * i - f * h, f * g - d * i, d * h - e * g
    det = a * co_a + b * co_b + c * co_c
    return (
        np.array(
            [
                [co_a, c * h - b * i, b * f - c * e],
                [co_b, a * i - c * g, c * d - a * f],
                [co_c, b * g - a * h, a * e - b * d],
            ]
        )
        / det
    )


def rot_z(yaw_rad: float) -> np.ndarray:
    """Rotation matrix about the world z axis."""
    c, s = np.cos(yaw_rad), np.sin(yaw_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def down_rotation(tool_axis_local: tuple[float, float, float]) -> np.ndarray:
    """Tool-site rotation (columns = site axes in world) pointing the tool straight down at yaw 0.

    The site's x axis (the jaws' closing direction) lies along world +x at yaw 0.
    """
    axis = np.asarray(tool_axis_local, dtype=float)
    if not np.allclose(np.abs(axis), (0.0, 0.0, 1.0)):
        raise ValueError(f"tool axis must be the site's +z or -z, got {tool_axis_local}")
    z = np.array([0.0, 0.0, -1.0]) * axis[2]  # site z in world so that R @ axis = (0, 0, -1)
    x = np.array([1.0, 0.0, 0.0])
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


@dataclass
class IKResult:
    """A joint solution and how far its tool pose is from the target."""

    q: np.ndarray
    pos_err_m: float
    rot_err_rad: float
    iterations: int


class ArmKinematics:
    """Kinematics of one arm inside a compiled scene model."""

    def __init__(self, model: mujoco.MjModel, arm: ArmSpec):
        self.model = model
        self.arm = arm
        self._data = mujoco.MjData(model)
        joints = [model.joint(name) for name in arm.arm_joints]
        self.qpos_adr = np.array([j.qposadr[0] for j in joints])
        self.dof_adr = np.array([j.dofadr[0] for j in joints])
        self.q_low = np.array([j.range[0] for j in joints])
        self.q_high = np.array([j.range[1] for j in joints])
        self.site_id = model.site(arm.tool_site).id
        self.tool_axis_local = np.asarray(arm.tool_axis_local, dtype=float)
        self.r_down = down_rotation(arm.tool_axis_local)
        self.q_home = np.asarray(arm.home_q, dtype=float)
        self._eye_n = np.eye(len(joints))
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def target_rotation(self, yaw_rad: float) -> np.ndarray:
        """Tool rotation pointing down with the jaws turned ``yaw_rad`` about world z."""
        return rot_z(yaw_rad) @ self.r_down

    @staticmethod
    def yaw_of(rot: np.ndarray) -> float:
        """Yaw of a tool rotation: the angle of its x axis in the world xy plane."""
        return float(np.arctan2(rot[1, 0], rot[0, 0]))

    def fk(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tool-site position (m) and rotation for arm joint positions ``q`` (rad)."""
        d = self._data
        d.qpos[self.qpos_adr] = q
        mujoco.mj_kinematics(self.model, d)
        return d.site_xpos[self.site_id].copy(), d.site_xmat[self.site_id].reshape(3, 3).copy()

    def solve(
        self,
        target_pos: np.ndarray,
        target_rot: np.ndarray,
        q_seed: np.ndarray,
        max_iters: int = 60,
        tol_pos_m: float = 2e-4,
        tol_rot_rad: float = 2e-3,
        damping: float = 1e-3,
    ) -> IKResult:
        """Joint positions that put the tool site at ``target_pos`` with ``target_rot``.

        Starts from ``q_seed``, respects joint limits, and returns the best solution found
        with its residual errors (the caller decides whether they are small enough).
        """
        m, d = self.model, self._data
        q = np.clip(np.asarray(q_seed, dtype=float).copy(), self.q_low, self.q_high)
        best = (np.inf, q.copy(), np.inf, np.inf)
        it = last_gain = 0
        for it in range(1, max_iters + 1):
            d.qpos[self.qpos_adr] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            pos = d.site_xpos[self.site_id]
            rot = d.site_xmat[self.site_id].reshape(3, 3)
            e_pos = target_pos - pos
            e_rot = orientation_error(rot, target_rot)
            pos_err, rot_err = math.sqrt(float(e_pos @ e_pos)), math.sqrt(float(e_rot @ e_rot))
            score = pos_err + ROT_WEIGHT_M_PER_RAD * rot_err
            if score < best[0] - 1e-7:
                best = (score, q.copy(), pos_err, rot_err)
                last_gain = it
            if pos_err < tol_pos_m and rot_err < tol_rot_rad:
                break
            if it - last_gain >= 6:  # no progress: the target is out of reach, keep the best
                break
            mujoco.mj_jacSite(m, d, self._jacp, self._jacr, self.site_id)
            free = np.ones(q.shape[0], dtype=bool)
            for _ in range(q.shape[0]):
                dq = self._prioritised_step(e_pos, e_rot, q, damping, free)
                # A joint at a limit that the step pushes further is locked and the step re-solved,
                # so the remaining joints take over its share instead of the clip eating it.
                blocked = free & (
                    ((q <= self.q_low + 1e-9) & (dq < 0)) | ((q >= self.q_high - 1e-9) & (dq > 0))
                )
                if not blocked.any():
                    break
                free &= ~blocked
            step = float(np.max(np.abs(dq)))
            if step > 0.3:  # keep each iteration inside the linearisation's trust region
                dq *= 0.3 / step
            q = np.clip(q + dq, self.q_low, self.q_high)
        _, q_best, pos_err, rot_err = best
        return IKResult(q=q_best, pos_err_m=pos_err, rot_err_rad=rot_err, iterations=it)

    def _prioritised_step(
        self, e_pos: np.ndarray, e_rot: np.ndarray, q: np.ndarray, damping: float, free: np.ndarray
    ) -> np.ndarray:
        """One damped step: position first, orientation in its null space, posture last.

        Position wins where both cannot hold, so a 5-joint arm tilts its tool to reach
        instead of missing the target, as a real SO-101 does.
        """
        n = q.shape[0]
        jp = self._jacp[:, self.dof_adr] * free
        jr = self._jacr[:, self.dof_adr] * free
        jp_pinv = jp.T @ inv3(jp @ jp.T + damping**2 * _EYE3)
        dq = jp_pinv @ e_pos
        null_p = self._eye_n - jp_pinv @ jp
        jr_n = jr @ null_p
        jr_n_pinv = jr_n.T @ inv3(jr_n @ jr_n.T + ORIENTATION_DAMPING**2 * _EYE3)
        dq = dq + jr_n_pinv @ (e_rot - jr @ dq)
        if n > 6:
            null_pr = null_p - jr_n_pinv @ jr_n
            dq = dq + null_pr @ (0.2 * (self.q_home - q) * free)
        return dq
