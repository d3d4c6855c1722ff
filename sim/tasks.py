"""The tabletop tasks: objects, language instructions, success predicates, randomised resets.

Every task keeps a held-out split for evaluation: the named object's colour, its position
cell and the instruction's phrasing come from sets that the training split never uses.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from enum import StrEnum

import mujoco
import numpy as np

from limbic.sim.arms import ArmSpec
from limbic.sim.scene import add_cube, add_marker, add_tray

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.1),
    "green": (0.15, 0.7, 0.2),
    "blue": (0.12, 0.25, 0.9),
    "yellow": (0.95, 0.85, 0.1),
    "purple": (0.55, 0.2, 0.75),
    "orange": (1.0, 0.5, 0.05),
    "cyan": (0.1, 0.85, 0.9),
    "pink": (1.0, 0.45, 0.75),
    "brown": (0.45, 0.25, 0.08),
    "gray": (0.5, 0.5, 0.5),
    "black": (0.1, 0.1, 0.1),
    "lime": (0.6, 0.95, 0.1),
    "navy": (0.08, 0.1, 0.45),
    "teal": (0.0, 0.5, 0.5),
    "violet": (0.5, 0.3, 1.0),
    "mint": (0.6, 1.0, 0.7),
}
TRAIN_COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
HELDOUT_COLORS = ("cyan", "pink")
WIDE_COLORS = (*TRAIN_COLORS, "brown", "gray", "black", "lime", "navy", "teal", "violet", "mint")
"""The ``wide`` palette: the training colours and eight more, every one at least
:data:`HELDOUT_COLOR_MARGIN` from a held-out colour. More named colours on the training side
teach a critic to compare colours (and colour words) in general rather than six of them."""
PALETTES: dict[str, tuple[str, ...]] = {"train": TRAIN_COLORS, "wide": WIDE_COLORS}
"""The training split's palettes (``robot.sim.palette``); the held-out split keeps its own."""
HELDOUT_COLOR_MARGIN = 0.4
"""Least RGB distance from a held-out colour of any colour the training side may show."""

GRID = 4
HELDOUT_CELLS = frozenset({(0, 1), (1, 3), (2, 0), (3, 2)})
"""Cells of a 4x4 grid over the work area whose positions only the held-out split uses."""


class Split(StrEnum):
    """Which side of the held-out split an episode is drawn from."""

    TRAIN = "train"
    HELDOUT = "heldout"


@dataclass
class Phrasings:
    """Instruction templates; ``heldout`` ones never appear in training data."""

    train: tuple[str, ...]
    heldout: tuple[str, ...]

    def pick(self, rng: np.random.Generator, split: Split) -> str:
        """A template from the split's own set."""
        pool = self.heldout if split is Split.HELDOUT else self.train
        return pool[int(rng.integers(len(pool)))]

    def all(self) -> tuple[str, ...]:
        """Every template of the task."""
        return self.train + self.heldout


def _cell_of(u: float, v: float) -> tuple[int, int]:
    return (min(int(u * GRID), GRID - 1), min(int(v * GRID), GRID - 1))


def in_heldout_cell(u: float, v: float) -> bool:
    """Whether the point ``(u, v)`` of the unit square (the work area) is in a held-out cell."""
    return _cell_of(u, v) in HELDOUT_CELLS


class Task(abc.ABC):
    """One task on one arm: builds its objects into the scene, resets them, judges success."""

    name: str = ""
    step_limit: int = 100
    phrasings: Phrasings
    goal_mocap: str | None = None
    """The mocap body marking where the object goes, when the approach to the object does not
    depend on it (see :mod:`limbic.sim.counterfactual`); None for tasks without one."""

    distractors: tuple[str, ...] = ()
    """Slots of :attr:`colors` that the instruction does not name (not part of the goal)."""

    def __init__(self, arm: ArmSpec):
        self.arm = arm
        self.scale = arm.cube_half_m / 0.0125
        self.half = arm.cube_half_m
        self.instruction = ""
        self.colors: dict[str, str] = {}
        self.palette: tuple[str, ...] = TRAIN_COLORS
        """The training split's colours (:data:`PALETTES`); the held-out split names its own
        colours and draws the others from :data:`TRAIN_COLORS` whatever this is."""
        self.cell: tuple[int, int] | None = None
        """The grid cell of the work area (``GRID`` x ``GRID``; ``(i, j)``, ``i`` along x away
        from the arm's base, ``j`` along y) the named object was placed in at the last reset."""
        self.next_cell: tuple[int, int] | None = None
        """The cell to put the named object in at the next reset (a layout curriculum's choice),
        on the split's own side of the held-out cells; used once, then cleared. None: anywhere
        on that side."""

    @property
    def goal(self) -> dict[str, str]:
        """What the current episode asks for: the colour of every object the instruction names
        (slot -> colour; distractors left out). Two episodes share a goal when these match,
        whatever their phrasing."""
        return {k: v for k, v in self.colors.items() if k not in self.distractors}

    # --- scene -------------------------------------------------------------------------
    @abc.abstractmethod
    def add_objects(self, spec: mujoco.MjSpec) -> None:
        """Add this task's bodies to the scene spec (poses are set at reset)."""

    def bind(self, model: mujoco.MjModel) -> None:
        """Resolve names to ids once the scene is compiled."""
        self.model = model
        first_link = model.jnt_bodyid[model.joint(self.arm.arm_joints[0]).id]
        arm_root = model.body_rootid[first_link]
        self.arm_geoms = frozenset(
            int(g) for g in np.flatnonzero(model.body_rootid[model.geom_bodyid] == arm_root)
        )
        self.site_id = model.site(self.arm.tool_site).id

    # --- episode -----------------------------------------------------------------------
    @abc.abstractmethod
    def reset(self, data: mujoco.MjData, rng: np.random.Generator, split: Split) -> str:
        """Place and colour the objects for a new episode; return the instruction."""

    @abc.abstractmethod
    def success(self, data: mujoco.MjData) -> bool:
        """The task's success predicate on the current state."""

    @abc.abstractmethod
    def goal_info(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        """Privileged object and goal poses, for the scripted expert only."""

    stage_weights: tuple[float, ...] = ()
    """Share of the task's progress each stage of :meth:`stage_distances` carries (sum 1)."""

    def stage_distances(self, data: mujoco.MjData) -> np.ndarray:
        """Per stage of the task, how far the scene is from completing it (m; 0: complete).

        With the distances at an episode's first frame, :func:`task_progress` turns these into
        the episode's true progress, which a recording stores for the progress critic's labels
        (``critic/labels.py``): a failure then teaches how far it got, not only "not done".
        """
        raise NotImplementedError(f"task {self.name!r} has no stage distances")

    def _held(self, data: mujoco.MjData, body: str, rest_z: float) -> float:
        """A grasp stage's distance: 0 while the cube is off the table in the arm's grip, else
        how far it still is from being so (its height below ``rest_z`` plus 5 mm, floored at
        1 mm, so a cube on the table is never "held")."""
        lifted = self.body_pos(data, body)[2] - rest_z
        if lifted > 0.005 * self.scale and self.touches_arm(data, body):
            return 0.0
        return max(0.005 * self.scale - lifted, 0.001 * self.scale)

    def start_tool_pos(self, data: mujoco.MjData, rng: np.random.Generator) -> np.ndarray | None:
        """Where the tool starts this episode (called after :meth:`reset`); None: the home pose."""
        return None

    # --- helpers -----------------------------------------------------------------------
    def cell_of(self, xy: np.ndarray) -> tuple[int, int]:
        """The grid cell of the work area a table position ``(x, y)`` (m) lies in."""
        cx, cy = self.arm.work_center_xy
        hx, hy = self.arm.work_half_extent_xy
        u = float(np.clip((xy[0] - cx + hx) / (2 * hx), 0.0, 1.0))
        v = float(np.clip((xy[1] - cy + hy) / (2 * hy), 0.0, 1.0))
        return _cell_of(u, v)

    def sample_xy(
        self,
        rng: np.random.Generator,
        heldout: bool,
        avoid: list[tuple[np.ndarray, float]] = (),
        margin: float = 0.0,
        cell: tuple[int, int] | None = None,
    ) -> np.ndarray | None:
        """A table position in the work area: in a held-out cell iff ``heldout``, clear of ``avoid``
        (and inside ``cell`` when one is given).

        Returns None when no such position turns up (the caller re-draws the whole layout).
        """
        cx, cy = self.arm.work_center_xy
        hx, hy = self.arm.work_half_extent_xy
        for _ in range(500):
            if cell is None:
                u, v = rng.uniform(0.0, 1.0, size=2)
            else:
                u, v = (np.asarray(cell, np.float64) + rng.uniform(0.0, 1.0, size=2)) / GRID
            if in_heldout_cell(u, v) != heldout:
                continue
            xy = np.array([cx - hx + 2 * hx * u, cy - hy + 2 * hy * v])
            if margin and (abs(xy[0] - cx) > hx - margin or abs(xy[1] - cy) > hy - margin):
                continue
            if all(np.linalg.norm(xy - p) >= d for p, d in avoid):
                return xy
        return None

    def sample_pair(
        self,
        rng: np.random.Generator,
        split: Split,
        min_dist: float,
        max_dist: float = np.inf,
        margins: tuple[float, float] = (0.0, 0.0),
    ) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the named object (held out iff the split is) and a second object.

        The second lands in training cells, ``min_dist``..``max_dist`` from the first.
        """
        heldout = split is Split.HELDOUT
        cell, self.next_cell = self.next_cell, None
        if cell is not None:
            cell = (int(cell[0]), int(cell[1]))
            if not all(0 <= k < GRID for k in cell) or (cell in HELDOUT_CELLS) != heldout:
                raise ValueError(
                    f"{self.name}: cell {list(cell)} is not a {split.value} cell of the "
                    f"{GRID}x{GRID} work-area grid (held-out cells: "
                    f"{sorted(map(list, HELDOUT_CELLS))})"
                )
        for _ in range(1000):
            first = self.sample_xy(rng, heldout, margin=margins[0], cell=cell)
            second = self.sample_xy(rng, False, avoid=[(first, min_dist)], margin=margins[1])
            if (
                first is not None
                and second is not None
                and np.linalg.norm(second - first) <= max_dist
            ):
                self.cell = self.cell_of(first)
                return first, second
        where = f" with the first in cell {list(cell)}" if cell is not None else ""
        raise RuntimeError(
            f"{self.name}: no layout fits the work area with objects {min_dist:.3f} m apart{where}"
        )

    def pick_colors(self, rng: np.random.Generator, split: Split, n: int) -> list[str]:
        """``n`` distinct colour names; the first (the named object's) is held out iff the split is."""
        heldout = split is Split.HELDOUT
        first_pool = HELDOUT_COLORS if heldout else self.palette
        first = first_pool[int(rng.integers(len(first_pool)))]
        rest = [c for c in (TRAIN_COLORS if heldout else self.palette) if c != first]
        others = list(rng.choice(rest, size=n - 1, replace=False)) if n > 1 else []
        return [first, *[str(c) for c in others]]

    def set_color(self, geom: str, color: str) -> None:
        """Colour a geom by colour name."""
        self.model.geom(geom).rgba[:3] = COLORS[color]

    def place_cube(self, data: mujoco.MjData, name: str, xy: np.ndarray, yaw_rad: float) -> None:
        """Put a free cube flat on the table at ``xy`` turned ``yaw_rad``."""
        adr = self.model.joint(f"{name}_joint").qposadr[0]
        data.qpos[adr : adr + 3] = (xy[0], xy[1], self.half)
        data.qpos[adr + 3 : adr + 7] = (np.cos(yaw_rad / 2), 0.0, 0.0, np.sin(yaw_rad / 2))
        dof = self.model.joint(f"{name}_joint").dofadr[0]
        data.qvel[dof : dof + 6] = 0.0

    def place_mocap(self, data: mujoco.MjData, body: str, pos: np.ndarray) -> None:
        """Move a fixed (mocap) body."""
        data.mocap_pos[self.model.body(body).mocapid[0]] = pos

    def body_pos(self, data: mujoco.MjData, body: str) -> np.ndarray:
        """World position of a body."""
        return data.xpos[self.model.body(body).id].copy()

    def cube_yaw(self, data: mujoco.MjData, body: str) -> float:
        """Yaw of a cube about world z, folded into [-pi/4, pi/4] (a cube looks the same every 90 degrees)."""
        mat = data.xmat[self.model.body(body).id].reshape(3, 3)
        yaw = float(np.arctan2(mat[1, 0], mat[0, 0]))
        return (yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4

    def touches_arm(self, data: mujoco.MjData, geom: str) -> bool:
        """Whether a geom is in contact with any part of the arm."""
        gid = self.model.geom(geom).id
        for i in range(data.ncon):
            g1, g2 = int(data.contact.geom1[i]), int(data.contact.geom2[i])
            if (g1 == gid and g2 in self.arm_geoms) or (g2 == gid and g1 in self.arm_geoms):
                return True
        return False

    def random_cube_yaw(self, rng: np.random.Generator) -> float:
        """Cube yaw at reset: near the gripper's default yaw so a yaw-free action space can grasp."""
        return float(rng.uniform(-0.3, 0.3))


class ReachTask(Task):
    """Move the gripper to the named ball; a second ball of another colour is a distractor."""

    name = "reach"
    step_limit = 50
    distractors = ("distractor",)
    phrasings = Phrasings(
        train=("reach the {c} ball", "move the gripper to the {c} ball", "touch the {c} sphere"),
        heldout=("bring your hand to the {c} ball",),
    )

    def add_objects(self, spec: mujoco.MjSpec) -> None:
        for name in ("target", "distractor"):
            add_marker(spec, name, mujoco.mjtGeom.mjGEOM_SPHERE, [0.012 * self.scale, 0, 0])

    def bind(self, model: mujoco.MjModel) -> None:
        super().bind(model)
        self.tolerance_m = 0.02 * self.scale

    def _height(self, rng: np.random.Generator) -> float:
        lo = 0.03 * self.scale
        hi = 0.07 if self.arm.name == "so101" else 0.25
        return float(rng.uniform(lo, hi))

    def reset(self, data: mujoco.MjData, rng: np.random.Generator, split: Split) -> str:
        target_xy, other_xy = self.sample_pair(rng, split, 0.07 * self.scale)
        self.place_mocap(data, "target", np.array([*target_xy, self._height(rng)]))
        self.place_mocap(data, "distractor", np.array([*other_xy, self._height(rng)]))
        c, d = self.pick_colors(rng, split, 2)
        self.set_color("target", c)
        self.set_color("distractor", d)
        self.colors = {"target": c, "distractor": d}
        return self.phrasings.pick(rng, split).format(c=c)

    def start_tool_pos(self, data: mujoco.MjData, rng: np.random.Generator) -> np.ndarray:
        """Start across the work area from the target, so reaching it takes a real motion."""
        target = data.mocap_pos[self.model.body("target").mocapid[0]]
        center = np.array(self.arm.work_center_xy)
        half = np.array(self.arm.work_half_extent_xy)
        xy = (
            center
            - (target[:2] - center) * rng.uniform(0.6, 1.0)
            + rng.normal(0.0, 0.01 * self.scale, 2)
        )
        xy = np.clip(xy, center - half, center + half)
        return np.array([*xy, rng.uniform(0.06, 0.09) * self.scale])

    def success(self, data: mujoco.MjData) -> bool:
        tool = data.site_xpos[self.site_id]
        return bool(
            np.linalg.norm(tool - data.mocap_pos[self.model.body("target").mocapid[0]])
            < self.tolerance_m
        )

    def goal_info(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        return {"target": data.mocap_pos[self.model.body("target").mocapid[0]].copy()}

    stage_weights = (1.0,)

    def stage_distances(self, data: mujoco.MjData) -> np.ndarray:
        """The tool's distance to the named ball (the distractor does not count)."""
        tool = data.site_xpos[self.site_id]
        target = data.mocap_pos[self.model.body("target").mocapid[0]]
        return np.array([np.linalg.norm(tool - target)])


class PushTask(Task):
    """Push the cube onto a coloured square on the table, without lifting it."""

    name = "push"
    step_limit = 120
    phrasings = Phrasings(
        train=("push the {c} cube onto the {z} square", "slide the {c} block to the {z} square"),
        heldout=("shove the {c} cube into the {z} square",),
    )

    def add_objects(self, spec: mujoco.MjSpec) -> None:
        self.zone_half = 0.025 * self.scale
        add_marker(
            spec, "zone", mujoco.mjtGeom.mjGEOM_BOX, [self.zone_half, self.zone_half, 0.0005]
        )
        add_cube(spec, "cube", self.half, 0.03 * self.scale**3)

    def reset(self, data: mujoco.MjData, rng: np.random.Generator, split: Split) -> str:
        margin = 0.02 * self.scale
        cube_xy, zone_xy = self.sample_pair(
            rng, split, 0.06 * self.scale, 0.11 * self.scale, (margin, margin)
        )
        self.place_cube(data, "cube", cube_xy, self.random_cube_yaw(rng))
        self.place_mocap(data, "zone", np.array([*zone_xy, 0.0005]))
        c, z = self.pick_colors(rng, split, 2)
        self.set_color("cube", c)
        self.set_color("zone", z)
        self.colors = {"cube": c, "zone": z}
        return self.phrasings.pick(rng, split).format(c=c, z=z)

    def success(self, data: mujoco.MjData) -> bool:
        cube = self.body_pos(data, "cube")
        zone = data.mocap_pos[self.model.body("zone").mocapid[0]]
        inside = bool(np.all(np.abs(cube[:2] - zone[:2]) < self.zone_half))
        return inside and cube[2] < 1.5 * self.half

    def goal_info(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        return {
            "cube": self.body_pos(data, "cube"),
            "zone": data.mocap_pos[self.model.body("zone").mocapid[0]].copy(),
        }

    stage_weights = (0.2, 0.8)

    def stage_distances(self, data: mujoco.MjData) -> np.ndarray:
        """The tool's distance to the cube, then the cube's distance to the square (on the table)."""
        tool = data.site_xpos[self.site_id]
        cube = self.body_pos(data, "cube")
        zone = data.mocap_pos[self.model.body("zone").mocapid[0]]
        return np.array([np.linalg.norm(tool - cube), np.linalg.norm(cube[:2] - zone[:2])])


class PickPlaceTask(Task):
    """Pick up the named cube and put it in the bowl (an open tray)."""

    name = "pick_place"
    step_limit = 120
    goal_mocap = "bowl"
    phrasings = Phrasings(
        train=(
            "put the {c} cube in the bowl",
            "pick up the {c} cube and place it in the bowl",
            "place the {c} block into the bowl",
        ),
        heldout=("drop the {c} cube into the bowl",),
    )

    def add_objects(self, spec: mujoco.MjSpec) -> None:
        self.inner_half = 0.032 * self.scale
        self.wall_h = 0.015 * self.scale
        add_tray(spec, "bowl", self.inner_half, self.wall_h, 0.004 * self.scale)
        add_cube(spec, "cube", self.half, 0.02 * self.scale**3)

    def reset(self, data: mujoco.MjData, rng: np.random.Generator, split: Split) -> str:
        cube_xy, bowl_xy = self.sample_pair(
            rng, split, 0.075 * self.scale, margins=(0.01 * self.scale, 0.02 * self.scale)
        )
        self.place_cube(data, "cube", cube_xy, self.random_cube_yaw(rng))
        self.place_mocap(data, "bowl", np.array([*bowl_xy, 0.0]))
        (c,) = self.pick_colors(rng, split, 1)
        self.set_color("cube", c)
        self.colors = {"cube": c}
        return self.phrasings.pick(rng, split).format(c=c)

    def success(self, data: mujoco.MjData) -> bool:
        cube = self.body_pos(data, "cube")
        bowl = data.mocap_pos[self.model.body("bowl").mocapid[0]]
        return self._in_bowl(cube, bowl) and not self.touches_arm(data, "cube")

    def _in_bowl(self, cube: np.ndarray, bowl: np.ndarray) -> bool:
        """The cube inside the bowl's walls and below their rim."""
        inside = bool(np.all(np.abs(cube[:2] - bowl[:2]) < self.inner_half))
        return inside and cube[2] < self.wall_h + self.half

    def goal_info(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        return {
            "cube": self.body_pos(data, "cube"),
            "cube_yaw": np.array(self.cube_yaw(data, "cube")),
            "bowl": data.mocap_pos[self.model.body("bowl").mocapid[0]].copy(),
            "drop_height": np.array(self.wall_h + 2.2 * self.half),
        }

    stage_weights = (0.3, 0.2, 0.5)

    def stage_distances(self, data: mujoco.MjData) -> np.ndarray:
        """The tool's distance to the cube, the grasp (0 while the cube is held off the table;
        a cube resting in the bowl counts as placed, so letting go there loses nothing), and the
        cube's distance to where it rests in the bowl (0 once it does)."""
        tool = data.site_xpos[self.site_id]
        cube = self.body_pos(data, "cube")
        bowl = data.mocap_pos[self.model.body("bowl").mocapid[0]]
        in_bowl = self._in_bowl(cube, bowl)
        rest = np.array([bowl[0], bowl[1], self.half])
        place = 0.0 if in_bowl else float(np.linalg.norm(cube - rest))
        held = 0.0 if in_bowl else self._held(data, "cube", self.half)
        reach = 0.0 if in_bowl or held == 0.0 else float(np.linalg.norm(tool - cube))
        return np.array([reach, held, place])


class StackTask(Task):
    """Stack the first named cube on the second and let go."""

    name = "stack"
    step_limit = 140
    phrasings = Phrasings(
        train=("stack the {a} cube on the {b} cube", "put the {a} block on top of the {b} block"),
        heldout=("place the {a} cube onto the {b} cube",),
    )

    def add_objects(self, spec: mujoco.MjSpec) -> None:
        add_cube(spec, "cube_a", self.half, 0.02 * self.scale**3)
        add_cube(spec, "cube_b", self.half, 0.06 * self.scale**3)

    def reset(self, data: mujoco.MjData, rng: np.random.Generator, split: Split) -> str:
        a_xy, b_xy = self.sample_pair(
            rng, split, 0.065 * self.scale, margins=(0.01 * self.scale, 0.01 * self.scale)
        )
        self.place_cube(data, "cube_a", a_xy, self.random_cube_yaw(rng))
        self.place_cube(data, "cube_b", b_xy, self.random_cube_yaw(rng))
        a, b = self.pick_colors(rng, split, 2)
        self.set_color("cube_a", a)
        self.set_color("cube_b", b)
        self.colors = {"cube_a": a, "cube_b": b}
        return self.phrasings.pick(rng, split).format(a=a, b=b)

    def success(self, data: mujoco.MjData) -> bool:
        a, b = self.body_pos(data, "cube_a"), self.body_pos(data, "cube_b")
        b_on_table = b[2] < 1.3 * self.half
        return bool(self._on_top(a, b) and b_on_table and not self.touches_arm(data, "cube_a"))

    def _on_top(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Cube ``a`` over ``b`` and resting on it."""
        aligned = np.linalg.norm(a[:2] - b[:2]) < self.half
        return bool(aligned and 1.7 * self.half < a[2] - b[2] < 2.3 * self.half)

    def goal_info(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        return {
            "cube": self.body_pos(data, "cube_a"),
            "cube_yaw": np.array(self.cube_yaw(data, "cube_a")),
            "base": self.body_pos(data, "cube_b"),
            "base_yaw": np.array(self.cube_yaw(data, "cube_b")),
        }

    stage_weights = (0.3, 0.2, 0.5)

    def stage_distances(self, data: mujoco.MjData) -> np.ndarray:
        """The tool's distance to the first cube, the grasp (0 while it is held off the table,
        or resting on the second cube), and its distance to its place on top of the second."""
        tool = data.site_xpos[self.site_id]
        a, b = self.body_pos(data, "cube_a"), self.body_pos(data, "cube_b")
        on_top = np.array([b[0], b[1], b[2] + 2 * self.half])
        placed = self._on_top(a, b)
        held = 0.0 if placed else self._held(data, "cube_a", self.half)
        reach = 0.0 if placed or held == 0.0 else float(np.linalg.norm(tool - a))
        return np.array([reach, held, float(np.linalg.norm(a - on_top))])


SHORT_OF_SUCCESS = 0.9
"""The most true progress a state short of success is given."""


def task_progress(
    distances: np.ndarray, start: np.ndarray, weights: tuple[float, ...], success: bool
) -> float:
    """An episode's true progress in [0, 1] from its stage distances now and at its first frame.

    Each stage counts ``1 − d / d_start`` (clipped to [0, 1]) of its weight; the tasks report
    an earlier stage as done while a later one holds (a held cube needs no more approach), and
    as undone again when it is lost (a cube dropped beside the bowl must be grasped anew).
    Success is 1 and anything short of it at most :data:`SHORT_OF_SUCCESS`, so a near miss
    never looks finished (nor counts among the critic's goal frames, from 0.95 on).
    """
    if success:
        return 1.0
    d = np.asarray(distances, np.float64)
    d0 = np.maximum(np.asarray(start, np.float64), 1e-6)
    done = np.clip(1.0 - d / d0, 0.0, 1.0)
    return float(min(np.dot(weights, done), SHORT_OF_SUCCESS))


TASKS: dict[str, type[Task]] = {t.name: t for t in (ReachTask, PushTask, PickPlaceTask, StackTask)}


def make_task(name: str, arm: ArmSpec) -> Task:
    """Instantiate a task by name for an arm; the error lists the tasks that exist."""
    try:
        return TASKS[name](arm)
    except KeyError:
        raise KeyError(f"unknown task {name!r}; choose from {sorted(TASKS)}") from None
