"""Scene assembly: an arm on a table, lights, a fixed front camera, the task's objects.

The arm's own MJCF is the root of the spec; the table, lights, cameras and objects are added
around it, so no asset is copied and Panda meshes resolve inside the installed gym-hil.
Rendering settings are chosen for speed: no MSAA, small or no shadow maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from limbic.launch.config import require
from limbic.sim.arms import ArmSpec

FRONT_CAMERA = "front"


@dataclass
class CameraConfig:
    """Camera views and rendering quality."""

    height: int = 128
    """Image height in pixels."""
    width: int = 128
    """Image width in pixels."""
    views: tuple[str, ...] = ("front", "wrist")
    """Views to render, in order: ``front`` (fixed) and/or ``wrist`` (on the gripper)."""
    shadow_map_px: int = 0
    """Shadow-map size; 0 turns shadows off (the default shadow maps cost about 10x)."""
    jitter_pos_m: float = 0.01
    """Front-camera position jitter at reset (uniform, per axis)."""
    jitter_rot_rad: float = 0.015
    """Front-camera orientation jitter at reset."""
    front_pos: tuple[float, float, float] | None = None
    """Front-camera position in the world (m); None: the arm's own placement."""
    front_lookat: tuple[float, float, float] | None = None
    """The point the front camera looks at (m); None: the arm's own."""
    front_fovy_deg: float | None = None
    """The front camera's vertical field of view (degrees); None: the arm's own."""
    mesh_detail: str = "fast"
    """``fast`` draws mesh-heavy arms (the Panda) with their collision meshes, 2-3x cheaper in
    software GL; ``full`` draws their visual meshes."""

    def __post_init__(self) -> None:
        self.views = tuple(self.views)
        require(
            16 <= self.height <= 1024, "camera.height", f"must be in [16, 1024], got {self.height}"
        )
        require(
            16 <= self.width <= 1024, "camera.width", f"must be in [16, 1024], got {self.width}"
        )
        require(len(self.views) > 0, "camera.views", "needs at least one view")
        unknown = [v for v in self.views if v not in ("front", "wrist")]
        require(
            not unknown,
            "camera.views",
            f"unknown view(s) {unknown}; choose from ['front', 'wrist']",
        )
        require(
            len(set(self.views)) == len(self.views),
            "camera.views",
            f"duplicate views in {list(self.views)}",
        )
        require(
            self.shadow_map_px >= 0,
            "camera.shadow_map_px",
            f"must be >= 0, got {self.shadow_map_px}",
        )
        require(
            self.jitter_pos_m >= 0 and self.jitter_rot_rad >= 0,
            "camera.jitter",
            "jitter must be >= 0",
        )
        require(
            self.mesh_detail in ("fast", "full"),
            "camera.mesh_detail",
            f"{self.mesh_detail!r} is not 'fast' or 'full'",
        )

        for name in ("front_pos", "front_lookat"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(x) for x in value)
                require(
                    len(value) == 3, f"camera.{name}", f"needs 3 numbers (m), got {list(value)}"
                )
                setattr(self, name, value)
        if self.front_pos is not None and self.front_lookat is not None:
            require(
                self.front_pos != self.front_lookat,
                "camera.front_lookat",
                "must differ from camera.front_pos",
            )
        require(
            self.front_fovy_deg is None or 5.0 <= self.front_fovy_deg <= 150.0,
            "camera.front_fovy_deg",
            f"must be in [5, 150] degrees, got {self.front_fovy_deg}",
        )

    def scene_option(self) -> mujoco.MjvOption:
        """Which geom groups are drawn: 0-1 always, then 2 (visual meshes) or 3 (collision meshes)."""
        opt = mujoco.MjvOption()
        full = self.mesh_detail == "full"
        opt.geomgroup[2] = int(full)
        opt.geomgroup[3] = int(not full)
        return opt

    @property
    def image_hw(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return (self.height, self.width)


class AppearanceJitter:
    """Per-episode lighting, material colour and front-camera pose jitter around the model's own."""

    def __init__(self, model: mujoco.MjModel, camera: CameraConfig, front_camera: str):
        self.model, self.camera = model, camera
        self.front_id = model.camera(front_camera).id
        self.front_pos0 = model.cam_pos[self.front_id].copy()
        self.front_quat0 = model.cam_quat[self.front_id].copy()
        self.light_diffuse0 = model.light_diffuse.copy()
        self.mat_rgba0 = model.mat_rgba.copy()

    def apply(self, rng: np.random.Generator) -> None:
        """Draw a new appearance from ``rng`` (always the same number of draws)."""
        m, cam = self.model, self.camera
        m.cam_pos[self.front_id] = self.front_pos0 + rng.uniform(
            -cam.jitter_pos_m, cam.jitter_pos_m, 3
        )
        axis = rng.normal(size=3)
        angle = rng.uniform(0.0, cam.jitter_rot_rad)
        dq = np.zeros(4)
        mujoco.mju_axisAngle2Quat(dq, axis / np.linalg.norm(axis), angle)
        q = np.zeros(4)
        mujoco.mju_mulQuat(q, self.front_quat0, dq)
        m.cam_quat[self.front_id] = q
        m.light_diffuse[:] = self.light_diffuse0 * rng.uniform(0.7, 1.3)
        m.vis.headlight.ambient[:] = rng.uniform(0.25, 0.45)
        m.mat_rgba[:] = self.mat_rgba0
        m.mat_rgba[:, :3] *= rng.uniform(0.85, 1.15, size=(m.nmat, 3))


def look_at_quat(pos: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Quaternion (w, x, y, z) of a MuJoCo camera at ``pos`` looking at ``target`` with world z up."""
    forward = np.asarray(target, float) - np.asarray(pos, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    # MuJoCo cameras look along their -z axis with +y up.
    mat = np.stack([right, up, -forward], axis=1)
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, mat.flatten())
    return quat


def build_scene_spec(arm: ArmSpec, camera: CameraConfig) -> mujoco.MjSpec:
    """The arm on a table with lights and the front camera; tasks add their objects next."""
    spec = arm.build()
    spec.modelname = f"limbic_{arm.name}"
    spec.option.timestep = arm.timestep_s
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = 10.0
    vis = spec.visual
    vis.global_.offwidth = max(camera.width, 64)
    vis.global_.offheight = max(camera.height, 64)
    vis.quality.shadowsize = camera.shadow_map_px
    vis.quality.offsamples = 0
    vis.headlight.ambient = [0.35, 0.35, 0.35]
    vis.headlight.diffuse = [0.4, 0.4, 0.4]
    vis.headlight.specular = [0.0, 0.0, 0.0]

    scale = arm.cube_half_m / 0.0125
    world = spec.worldbody
    spec.add_texture(
        name="table_tex",
        type=mujoco.mjtTexture.mjTEXTURE_2D,
        builtin=mujoco.mjtBuiltin.mjBUILTIN_CHECKER,
        width=64,
        height=64,
        rgb1=[0.55, 0.45, 0.35],
        rgb2=[0.5, 0.41, 0.32],
    )
    table_mat = spec.add_material(name="table_mat", texrepeat=[8, 8], texuniform=True)
    table_mat.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = "table_tex"
    cx, cy = arm.work_center_xy
    world.add_geom(
        name="table",
        type=mujoco.mjtGeom.mjGEOM_PLANE,
        pos=[cx, cy, 0.0],
        size=[0.6 * scale, 0.6 * scale, 0.01],
        material="table_mat",
        friction=[0.6, 0.005, 0.0001],
    )
    world.add_geom(
        name="backdrop",
        type=mujoco.mjtGeom.mjGEOM_BOX,
        pos=[cx - 0.7 * scale, cy, 0.3 * scale],
        size=[0.01, 0.8 * scale, 0.3 * scale],
        rgba=[0.75, 0.78, 0.8, 1.0],
        contype=0,
        conaffinity=0,
    )
    world.add_light(
        name="key_light",
        pos=[cx + 0.2 * scale, cy - 0.3 * scale, 1.2 * scale],
        dir=[-0.15, 0.25, -1.0],
        diffuse=[0.6, 0.6, 0.6],
        specular=[0.1, 0.1, 0.1],
        castshadow=camera.shadow_map_px > 0,
    )
    pos = np.asarray(camera.front_pos or arm.front_camera_pos, float)
    lookat = np.asarray(camera.front_lookat or arm.front_camera_lookat, float)
    world.add_camera(
        name=FRONT_CAMERA,
        pos=pos,
        quat=look_at_quat(pos, lookat),
        fovy=camera.front_fovy_deg or arm.front_camera_fovy_deg,
    )
    return spec


def add_cube(spec: mujoco.MjSpec, name: str, half_m: float, mass_kg: float) -> None:
    """A free cube that the gripper can push, grasp and stack (placed by the task at reset)."""
    body = spec.worldbody.add_body(name=name, pos=[0.0, 0.0, half_m])
    body.add_freejoint(name=f"{name}_joint")
    body.add_geom(
        name=name,
        type=mujoco.mjtGeom.mjGEOM_BOX,
        size=[half_m] * 3,
        mass=mass_kg,
        rgba=[1, 0, 0, 1],
        condim=4,
        friction=[0.5, 0.01, 0.001],
        solref=[0.004, 1.0],
        solimp=[0.95, 0.99, 0.001, 0.5, 2.0],
    )


def add_marker(
    spec: mujoco.MjSpec, name: str, geom_type: mujoco.mjtGeom, size: list[float]
) -> None:
    """A visual-only object (target ball, goal patch) moved by the task as a mocap body."""
    body = spec.worldbody.add_body(name=name, mocap=True)
    body.add_geom(name=name, type=geom_type, size=size, rgba=[1, 0, 0, 1], contype=0, conaffinity=0)


def add_tray(
    spec: mujoco.MjSpec, name: str, inner_half_m: float, wall_h_m: float, wall_t_m: float
) -> None:
    """An open square tray (the "bowl"): a thin base and four walls, fixed to the table."""
    body = spec.worldbody.add_body(name=name, mocap=True)
    body.add_geom(
        name=f"{name}_base",
        type=mujoco.mjtGeom.mjGEOM_BOX,
        pos=[0, 0, 0.001],
        size=[inner_half_m + wall_t_m, inner_half_m + wall_t_m, 0.001],
        rgba=[1, 1, 1, 1],
    )
    offset = inner_half_m + wall_t_m / 2
    for i, (dx, dy) in enumerate(((1, 0), (-1, 0), (0, 1), (0, -1))):
        sx = wall_t_m / 2 if dx else inner_half_m + wall_t_m
        sy = wall_t_m / 2 if dy else inner_half_m + wall_t_m
        body.add_geom(
            name=f"{name}_wall{i}",
            type=mujoco.mjtGeom.mjGEOM_BOX,
            pos=[dx * offset, dy * offset, wall_h_m / 2],
            size=[sx, sy, wall_h_m / 2],
            rgba=[1, 1, 1, 1],
        )
