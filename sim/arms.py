"""The simulated arms: what each one is (joints, gripper, tool frame, reach) and how to load it.

* ``so101``: limbic's own primitive-geometry model of the SO-101 (``assets/so101.xml``).
* ``panda``: the Franka Panda with a Robotiq 2F-85, from the MJCF that the installed
  ``gym-hil`` package ships (read in place, never copied). Its torque motors are turned into
  joint position servos with gravity compensation so both arms take the same commands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

ASSETS = Path(__file__).resolve().parent / "assets"


@dataclass(frozen=True)
class GripperSpec:
    """One gripper actuator and the joint whose position says how closed it is."""

    actuator: str
    joint: str
    ctrl_open: float
    ctrl_closed: float
    q_open: float
    q_closed: float

    def ctrl(self, closure: float) -> float:
        """Actuator command for a closure in [0, 1] (0 open, 1 closed)."""
        return self.ctrl_open + float(closure) * (self.ctrl_closed - self.ctrl_open)

    def closure(self, q: float) -> float:
        """Joint position -> closure in [0, 1]."""
        return float(np.clip((q - self.q_open) / (self.q_closed - self.q_open), 0.0, 1.0))


@dataclass(frozen=True)
class ArmSpec:
    """Everything the scene, controller, tasks and expert need to know about one arm.

    Lengths in metres, angles in radians. ``home_q`` puts the tool above the middle of the
    work area, pointing down; the tool frame's orientation there defines yaw 0.
    """

    name: str
    robot_type: str
    arm_joints: tuple[str, ...]
    arm_actuators: tuple[str, ...]
    gripper: GripperSpec
    tool_site: str
    wrist_camera: str
    home_q: tuple[float, ...]
    tool_axis_local: tuple[float, float, float]
    """Direction the tool points in the tool site's frame (towards the fingertips)."""
    work_center_xy: tuple[float, float]
    work_half_extent_xy: tuple[float, float]
    """Objects spawn in ``center ± half_extent``."""
    tool_z_limits: tuple[float, float]
    """Lowest and highest tool-site height the controller allows above the table."""
    cube_half_m: float
    max_joint_step_rad: float
    max_ee_step_m: float
    max_yaw_step_rad: float
    front_camera_pos: tuple[float, float, float]
    front_camera_lookat: tuple[float, float, float]
    front_camera_fovy_deg: float
    timestep_s: float
    grasp_depth_m: float
    """How far below the cube's top face the tool site goes to grasp."""
    fingertip_drop_m: float
    """How far the closed fingertips reach below the tool site (measured on the model)."""
    build: Callable[[], mujoco.MjSpec]
    fixed_jaw_geom: str | None = None
    """The box geom of a one-sided gripper's fixed jaw (None: the fingers close symmetrically).
    Its inner face sits close to the tool site, so a grasp centred on the site lands that jaw on
    a turned cube's top; the expert shifts its grasp away from it (``ScriptedExpert``)."""

    @property
    def n_joints(self) -> int:
        """Number of arm joints (the gripper excluded)."""
        return len(self.arm_joints)

    @property
    def max_reach_m(self) -> float:
        """Radius of the work area from the base, for sanity checks."""
        cx, cy = self.work_center_xy
        hx, hy = self.work_half_extent_xy
        return float(np.hypot(abs(cx) + hx, abs(cy) + hy))


def _build_so101() -> mujoco.MjSpec:
    return mujoco.MjSpec.from_file(str(ASSETS / "so101.xml"))


def gym_hil_panda_xml() -> Path:
    """Path of the Panda MJCF inside the installed ``gym-hil`` package."""
    try:
        import gym_hil
    except ImportError as e:  # pragma: no cover - gym-hil is a hard dependency
        raise RuntimeError(
            "the Panda scene needs the 'gym-hil' package (pip install gym-hil)"
        ) from e
    path = Path(gym_hil.__file__).resolve().parent / "assets" / "panda.xml"
    if not path.is_file():
        raise RuntimeError(f"gym-hil is installed but {path} is missing; reinstall gym-hil")
    return path


# Joint-space servo gains for the Panda (N·m/rad and N·m·s/rad): stiff shoulder/elbow, softer wrist.
_PANDA_KP = (4500.0, 4500.0, 3500.0, 3500.0, 2000.0, 2000.0, 2000.0)
_PANDA_KV = (450.0, 450.0, 350.0, 350.0, 200.0, 200.0, 200.0)
_PANDA_LINKS = ("link1", "link2", "link3", "link4", "link5", "link6", "link7")


def _build_panda() -> mujoco.MjSpec:
    spec = mujoco.MjSpec.from_file(str(gym_hil_panda_xml()))
    for i, (kp, kv) in enumerate(zip(_PANDA_KP, _PANDA_KV, strict=True), start=1):
        act = spec.actuator(f"actuator{i}")
        joint = spec.joint(f"joint{i}")
        act.set_to_position(kp=kp, kv=kv)
        act.ctrlrange = np.array(joint.range, dtype=float)
        act.forcerange = np.array([-87.0, 87.0] if i <= 4 else [-12.0, 12.0])
        act.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
    for name in _PANDA_LINKS:
        spec.body(name).gravcomp = 1.0
    return spec


SO101 = ArmSpec(
    name="so101",
    robot_type="so101_follower",
    arm_joints=("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll"),
    arm_actuators=("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll"),
    gripper=GripperSpec(
        actuator="gripper",
        joint="gripper",
        ctrl_open=0.9,
        ctrl_closed=-0.17,
        q_open=0.9,
        q_closed=-0.17,
    ),
    tool_site="gripperframe",
    wrist_camera="wrist",
    home_q=(0.0, -0.55, 0.55, 1.45, 0.0),
    tool_axis_local=(0.0, 0.0, -1.0),
    work_center_xy=(0.2, 0.0),
    work_half_extent_xy=(0.045, 0.09),
    tool_z_limits=(0.008, 0.16),
    cube_half_m=0.0125,
    max_joint_step_rad=0.12,
    max_ee_step_m=0.02,
    max_yaw_step_rad=0.2,
    front_camera_pos=(0.41, 0.0, 0.23),
    front_camera_lookat=(0.19, 0.0, 0.03),
    front_camera_fovy_deg=55.0,
    timestep_s=0.002,
    grasp_depth_m=0.012,
    fingertip_drop_m=0.010,
    build=_build_so101,
    fixed_jaw_geom="fixed_jaw",
)

PANDA = ArmSpec(
    name="panda",
    robot_type="panda",
    arm_joints=tuple(f"joint{i}" for i in range(1, 8)),
    arm_actuators=tuple(f"actuator{i}" for i in range(1, 8)),
    gripper=GripperSpec(
        actuator="fingers_actuator",
        joint="right_driver_joint",
        ctrl_open=0.0,
        ctrl_closed=255.0,
        q_open=0.0,
        q_closed=0.8,
    ),
    tool_site="pinch",
    wrist_camera="handcam_rgb",
    home_q=(0.0, 0.1, 0.0, -2.2, 0.0, 2.3, 0.785398),
    tool_axis_local=(0.0, 0.0, 1.0),
    work_center_xy=(0.5, 0.0),
    work_half_extent_xy=(0.12, 0.18),
    tool_z_limits=(0.016, 0.45),
    cube_half_m=0.02,
    max_joint_step_rad=0.12,
    max_ee_step_m=0.03,
    max_yaw_step_rad=0.2,
    front_camera_pos=(1.1, 0.0, 0.68),
    front_camera_lookat=(0.45, 0.0, 0.12),
    front_camera_fovy_deg=45.0,
    timestep_s=0.002,
    grasp_depth_m=0.02,
    fingertip_drop_m=0.018,
    build=_build_panda,
)

ARMS: dict[str, ArmSpec] = {arm.name: arm for arm in (SO101, PANDA)}


def get_arm(name: str) -> ArmSpec:
    """Look up an arm by name; the error lists the ones that exist."""
    try:
        return ARMS[name]
    except KeyError:
        raise KeyError(f"unknown arm {name!r}; choose from {sorted(ARMS)}") from None
