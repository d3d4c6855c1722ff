"""Simulation behaviour: determinism, predicates, IK accuracy, the expert, bad input."""

import gymnasium as gym
import mujoco
import numpy as np
import pytest

from limbic.contracts import ContractError
from limbic.launch.config import ConfigError
from limbic.sim.control import ActionConfig
from limbic.sim.env import SimConfig, SimEnv
from limbic.sim.expert import ExpertConfig, ExpertMode, ScriptedExpert
from limbic.sim.gym_env import ENV_IDS, register_envs
from limbic.sim.robot import SimRobot
from limbic.sim.scene import CameraConfig
from limbic.sim.tasks import (
    COLORS,
    HELDOUT_CELLS,
    HELDOUT_COLOR_MARGIN,
    HELDOUT_COLORS,
    SHORT_OF_SUCCESS,
    TASKS,
    TRAIN_COLORS,
    WIDE_COLORS,
    task_progress,
)

ARMS = ("so101", "panda")


@pytest.fixture(scope="module")
def envs():
    made = {}

    def get(arm: str, task: str, kind: str = "ee_delta") -> SimEnv:
        key = (arm, task, kind)
        if key not in made:
            made[key] = SimEnv(SimConfig(arm=arm, task=task, action=ActionConfig(kind=kind)))
        return made[key]

    yield get
    for env in made.values():
        env.close()


@pytest.mark.parametrize("arm", ARMS)
def test_reset_is_deterministic_per_seed(envs, arm):
    env = envs(arm, "pick_place")
    a = env.reset(seed=7)
    a_images = {k: v.copy() for k, v in a.images.items()}
    a_state, a_instr, a_goal = a.state.copy(), a.instruction, env.goal_info()
    env.reset(seed=8)
    b = env.reset(seed=7)
    for view in a_images:
        np.testing.assert_array_equal(a_images[view], b.images[view])
    np.testing.assert_array_equal(a_state, b.state)
    assert a_instr == b.instruction
    np.testing.assert_array_equal(a_goal["cube"], env.goal_info()["cube"])
    c = env.reset(seed=9)
    assert not np.array_equal(c.images["front"], a_images["front"])


def test_steps_are_deterministic(envs):
    env = envs("so101", "push")
    rollouts = []
    for _ in range(2):
        env.reset(seed=3)
        for _ in range(5):
            r = env.step(np.array([0.01, -0.01, -0.005, 1.0], np.float32))
        rollouts.append((r.observation.state.copy(), r.observation.images["wrist"].copy()))
    np.testing.assert_array_equal(rollouts[0][0], rollouts[1][0])
    np.testing.assert_array_equal(rollouts[0][1], rollouts[1][1])


def test_observation_matches_the_contract(envs):
    env = envs("so101", "reach")
    obs = env.reset(seed=0)
    obs.validate(views=("front", "wrist"), state_dim=6, image_hw=(128, 128))
    assert obs.frame_timestamps_ns.keys() == {"front", "wrist"}
    r = env.step(np.zeros(env.action_spec.dim, np.float32))
    assert r.observation.timestamp_ns == pytest.approx(0.1e9, abs=1e6)
    assert r.observation.step == 1


def _settle(env: SimEnv, ticks: int = 3) -> None:
    mujoco.mj_forward(env.model, env.data)
    for _ in range(ticks * env.substeps):
        mujoco.mj_step(env.model, env.data)


@pytest.mark.parametrize("arm", ARMS)
def test_pick_place_predicate(envs, arm):
    env = envs(arm, "pick_place")
    env.reset(seed=1)
    task = env.task
    assert not task.success(env.data)  # the cube starts on the table, away from the bowl
    bowl = env.goal_info()["bowl"]
    task.place_cube(env.data, "cube", bowl[:2], 0.0)
    _settle(env)
    assert task.success(env.data)
    task.place_cube(
        env.data, "cube", bowl[:2] + np.array([task.inner_half + 3 * task.half, 0.0]), 0.0
    )
    _settle(env)
    assert not task.success(env.data)


@pytest.mark.parametrize("arm", ARMS)
def test_stack_predicate(envs, arm):
    env = envs(arm, "stack")
    env.reset(seed=2)
    task = env.task
    assert not task.success(env.data)
    base = env.goal_info()["base"]
    adr = env.model.joint("cube_a_joint").qposadr[0]
    env.data.qpos[adr : adr + 3] = (base[0], base[1], 3.0 * task.half + 1e-4)
    env.data.qpos[adr + 3 : adr + 7] = (1, 0, 0, 0)
    _settle(env, 5)
    assert task.success(env.data)
    # the same cube beside the base instead of on it
    env.data.qpos[adr : adr + 3] = (base[0] + 3 * task.half, base[1], task.half)
    _settle(env)
    assert not task.success(env.data)


@pytest.mark.parametrize("arm", ARMS)
def test_push_predicate(envs, arm):
    env = envs(arm, "push")
    env.reset(seed=3)
    task = env.task
    assert not task.success(env.data)
    zone = env.goal_info()["zone"]
    task.place_cube(env.data, "cube", zone[:2], 0.2)
    _settle(env)
    assert task.success(env.data)
    task.place_cube(env.data, "cube", zone[:2] + np.array([0.0, 2 * task.zone_half]), 0.0)
    _settle(env)
    assert not task.success(env.data)


@pytest.mark.parametrize("arm", ARMS)
def test_reach_predicate(envs, arm):
    env = envs(arm, "reach")
    env.reset(seed=4)
    target = env.goal_info()["target"]
    assert not env.task.success(env.data)
    sol = env.kin.solve(target, env.kin.target_rotation(0.0), env.q_home)
    env.data.qpos[env.kin.qpos_adr] = sol.q
    mujoco.mj_forward(env.model, env.data)
    assert env.task.success(env.data)
    far = env.q_home.copy()
    env.data.qpos[env.kin.qpos_adr] = far
    mujoco.mj_forward(env.model, env.data)
    assert not env.task.success(env.data)


@pytest.mark.parametrize("arm", ARMS)
def test_ik_reaches_targets_within_5mm(envs, arm):
    env = envs(arm, "reach")
    rng = np.random.default_rng(0)
    cx, cy = env.arm.work_center_xy
    hx, hy = env.arm.work_half_extent_xy
    z_hi = 0.06 if arm == "so101" else 0.3
    for _ in range(30):
        target = np.array(
            [cx + rng.uniform(-hx, hx), cy + rng.uniform(-hy, hy), rng.uniform(0.015, z_hi)]
        )
        sol = env.kin.solve(target, env.kin.target_rotation(rng.uniform(-0.5, 0.5)), env.q_home)
        reached, _ = env.kin.fk(sol.q)
        assert np.linalg.norm(reached - target) < 0.005, (target, reached)


@pytest.mark.parametrize("arm", ARMS)
def test_controller_drives_tool_to_target_within_5mm(envs, arm):
    env = envs(arm, "reach")
    env.reset(seed=5)
    target = env.goal_info()["target"] + np.array([0.0, 0.0, 0.02])
    for _ in range(25):
        env.step(env.controller.action_towards(env.data, target, 0.0, 0.0))
    tool, _ = env.controller.tool_pose(env.data)
    assert np.linalg.norm(tool - target) < 0.005


def _episode_with_progress(env: SimEnv, expert: ScriptedExpert, seed: int):
    """Run the expert for one episode; its last step's result and the true progress of every
    state, the first included."""
    env.reset(seed=seed)
    expert.reset()
    progress = [env.task_progress()]
    for _ in range(env.step_limit):
        r = env.step(expert.act())
        progress.append(env.task_progress())
        if r.terminated or r.truncated:
            break
    return r, progress


@pytest.mark.parametrize("arm", ARMS)
@pytest.mark.parametrize("task", sorted(TASKS))
def test_expert_solves_every_task(envs, arm, task):
    """A small count here; ``limbic-bench sim`` runs the full 100 seeds."""
    env = envs(arm, task)
    expert = ScriptedExpert(env, seed=0)
    wins = 0
    for seed in range(4):
        r, progress = _episode_with_progress(env, expert, seed)
        wins += int(r.success)
        # the true progress the recordings store: 0 at the start, 1 on success, short of it before
        assert progress[0] == 0.0 and progress[-1] == 1.0
        assert max(progress[:-1]) <= SHORT_OF_SUCCESS
        assert np.mean(np.diff(progress) >= -0.02) > 0.8  # the expert rarely loses ground
    assert wins == 4


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_failed_or_abandoned_episode_ends_short_of_the_true_progress_of_success(envs, task):
    """The failure modes of the noisy operator (the wrong goal, giving up part-way) get partial
    true progress: more than the start somewhere, never the 1 of success."""
    env = envs("so101", task)
    for cfg in (ExpertConfig(p_fail=1.0), ExpertConfig(p_partial=1.0)):
        expert = ScriptedExpert(env, cfg, seed=1)
        reached = []
        for seed in range(3):
            r, progress = _episode_with_progress(env, expert, 20 + seed)
            if r.success:  # a partial episode may give up after its last phase
                continue
            assert max(progress) <= SHORT_OF_SUCCESS
            reached.append(max(progress))
        if cfg.p_fail:  # (a partial push may give up only after its last phase, and succeed)
            assert reached and max(reached) > 0.0, task


def test_task_progress_weighs_the_stages_and_keeps_success_apart():
    """``task_progress`` on hand-computed stages: each stage's share of its start distance
    covered, weighted; success is 1 whatever the distances; short of it, at most
    ``SHORT_OF_SUCCESS``; a stage further than at the start counts 0, not less."""
    w = (0.3, 0.2, 0.5)
    start = np.array([0.10, 0.005, 0.08])
    assert task_progress(start, start, w, False) == 0.0
    assert task_progress(np.array([0.05, 0.005, 0.08]), start, w, False) == pytest.approx(0.15)
    assert task_progress(np.array([0.0, 0.0, 0.04]), start, w, False) == pytest.approx(0.75)
    assert task_progress(np.array([0.2, 0.01, 0.2]), start, w, False) == 0.0
    assert task_progress(np.zeros(3), start, w, False) == SHORT_OF_SUCCESS
    assert task_progress(start, start, w, True) == 1.0


@pytest.mark.parametrize(("task", "body"), [("pick_place", "cube"), ("stack", "cube_a")])
@pytest.mark.parametrize("yaw", [-0.29, 0.29])
def test_expert_grasps_a_turned_cube_at_the_first_attempt(envs, task, body, yaw):
    """The SO-101's fixed jaw sits about a cube's half-width from the tool site: a grasp
    centred on a turned cube lands that jaw on its top. The expert shifts its grasp clear of it,
    so it never has to lift off and try again."""
    env = envs("so101", task)
    expert = ScriptedExpert(env, seed=0)
    for seed in range(2):
        env.reset(seed=seed)
        xy = env.goal_info()["cube"][:2]
        env.task.place_cube(env.data, body, xy, yaw)
        mujoco.mj_forward(env.model, env.data)
        assert float(env.goal_info()["cube_yaw"]) == pytest.approx(yaw, abs=0.01)
        expert.reset()
        phases = []
        for _ in range(env.step_limit):
            r = env.step(expert.act())
            phases.append(expert.phase)
            if r.terminated or r.truncated:
                break
        assert r.success
        assert phases == sorted(phases), "the expert went back to an earlier phase (a retry)"
        assert len(phases) < 45


class _OffsetExpert(ScriptedExpert):
    """The scripted expert with its grasp point moved by ``offset`` (m, x and y)."""

    offset = np.zeros(2)

    def _grasp_point(self, cube, cube_yaw):
        xy, z = super()._grasp_point(cube, cube_yaw)
        return xy + self.offset, z


def test_a_wider_jaw_gap_moves_the_grasp_point_back_along_the_jaws(envs):
    """``jaw_gap_m`` is the gap the expert leaves between the fixed jaw and the cube: 10 mm more
    of it moves the grasp point 10 mm along the jaws' axis towards the fixed jaw's side of the
    tool (the tool, fixed jaw and all, moves that much further out from the cube), and nowhere
    else."""
    env = envs("so101", "pick_place")
    narrow = ScriptedExpert(env, ExpertConfig(jaw_gap_m=0.005), seed=0)
    wide = ScriptedExpert(env, ExpertConfig(jaw_gap_m=0.015), seed=0)
    for seed in range(3):
        env.reset(seed=seed)
        cube, yaw, *_ = narrow._pick_place_goal()
        (xy_n, z_n), (xy_w, z_w) = narrow._grasp_point(cube, yaw), wide._grasp_point(cube, yaw)
        site = env.data.site_xpos[env.controller.kin.site_id][:2]
        towards_jaw = env.data.geom_xpos[narrow.fixed_jaw][:2] - site
        towards_jaw /= np.linalg.norm(towards_jaw)
        np.testing.assert_allclose(xy_w - xy_n, 0.010 * towards_jaw, atol=1e-6)
        assert z_w == z_n


@pytest.mark.parametrize("offset_mm", [-8.0, 8.0])
def test_the_experts_grasp_holds_a_few_millimetres_off_along_the_jaws(envs, offset_mm):
    """The SO-101's moving jaw slides the cube onto the fixed jaw, which sits on the base side of
    the tool. The expert leaves a gap (``JAW_MARGIN_M``) that puts its grasp point inside the
    window where a grasp holds, so a grasp 8 mm off along the jaws' axis, either way, still lifts
    the cube at the first attempt (with a 1.5 mm gap, 4 mm further in landed the fixed jaw on the
    cube in 23 of 26 layouts). Layouts anywhere, one next to the arm's base among them."""
    env = envs("so101", "pick_place")
    expert = _OffsetExpert(env, seed=0)
    expert.offset = np.array([offset_mm / 1000, 0.0])
    for seed, split in [(7000, "train"), (7001, "train"), (7002, "train"), (3_000_005, "heldout")]:
        env.reset(seed=seed, split=split)
        expert.reset()
        phases = []
        while not phases or phases[-1] < 4:
            env.step(expert.act())
            phases.append(expert.phase)
            assert len(phases) < 40, f"seed {seed}: the cube was not lifted"
        assert phases == sorted(phases), f"seed {seed}: the expert went back for another grasp"


def test_expert_stacks_a_cube_grasped_next_to_the_arms_base(envs):
    """Closing slides a cube next to the base towards it, where the SO-101 cannot lift the tool
    straight up to the stack's carry height; the expert lifts over the work area instead."""
    env = envs("so101", "stack")
    expert = ScriptedExpert(env, seed=0)
    for seed in (23, 28):  # held-out layouts with the cube in the row next to the base
        env.reset(seed=seed, split="heldout")
        assert env.layout_cell[0] == 0
        expert.reset()
        for _ in range(env.step_limit):
            r = env.step(expert.act())
            if r.terminated or r.truncated:
                break
        assert r.success, f"seed {seed}: stuck in phase {expert.phase}"


def test_expert_in_joint_space(envs):
    env = envs("so101", "pick_place", "joint_delta")
    expert = ScriptedExpert(env, seed=0)
    env.reset(seed=0)
    expert.reset()
    for _ in range(env.step_limit):
        r = env.step(expert.act())
        if r.terminated or r.truncated:
            break
    assert r.success


def test_expert_failure_mode_fails(envs):
    env = envs("so101", "pick_place")
    expert = ScriptedExpert(env, ExpertConfig(p_fail=1.0), seed=0)
    env.reset(seed=0)
    assert expert.reset() is ExpertMode.FAILED
    for _ in range(env.step_limit):
        r = env.step(expert.act())
        if r.terminated or r.truncated:
            break
    assert not r.success and r.truncated


def test_heldout_split_uses_its_own_colours_and_phrasings(envs):
    env = envs("so101", "pick_place")
    train_instr, held_instr = set(), set()
    for seed in range(30):
        env.reset(seed=seed, split="train")
        assert env.task.colors["cube"] in TRAIN_COLORS
        train_instr.add(env.instruction.replace(env.task.colors["cube"], "{c}"))
        env.reset(seed=seed, split="heldout")
        assert env.task.colors["cube"] in HELDOUT_COLORS
        held_instr.add(env.instruction.replace(env.task.colors["cube"], "{c}"))
    assert train_instr <= set(env.task.phrasings.train)
    assert held_instr <= set(env.task.phrasings.heldout)
    env.reset(split="train")


def test_the_wide_palette_keeps_clear_of_the_held_out_colours():
    assert set(TRAIN_COLORS) < set(WIDE_COLORS) and not set(HELDOUT_COLORS) & set(WIDE_COLORS)
    held = np.array([COLORS[c] for c in HELDOUT_COLORS])
    wide = np.array([COLORS[c] for c in WIDE_COLORS])
    assert np.linalg.norm(wide[:, None] - held[None], axis=-1).min() >= HELDOUT_COLOR_MARGIN
    gaps = np.linalg.norm(wide[:, None] - wide[None], axis=-1) + np.eye(len(wide))
    assert gaps.min() > 0.25  # every name a colour of its own


@pytest.mark.parametrize("task", ["reach", "push", "stack"])
def test_the_wide_palette_names_its_colours_on_the_training_side_only(task):
    wide = SimEnv(SimConfig(task=task, palette="wide", randomize=False))
    plain = SimEnv(SimConfig(task=task, randomize=False))
    seen = set()
    try:
        for seed in range(40):
            wide.reset(seed=seed, split="train")
            seen |= set(wide.task.colors.values())
            for name in wide.task.colors.values():
                assert name in WIDE_COLORS
            for name in wide.task.goal.values():  # the instruction names what the scene shows
                assert name in wide.instruction
            rgb = {k: wide.model.geom(k).rgba[:3] for k in wide.task.colors}
            for k, name in wide.task.colors.items():
                assert np.allclose(rgb[k], COLORS[name])
            # the held-out split is the same episode whichever palette the training side has
            wide.reset(seed=seed, split="heldout")
            plain.reset(seed=seed, split="heldout")
            assert wide.instruction == plain.instruction
            assert wide.task.colors == plain.task.colors
        assert seen - set(TRAIN_COLORS)  # some of the eight new colours came up
    finally:
        wide.close()
        plain.close()


def test_a_bad_palette_is_named():
    with pytest.raises(ConfigError, match="sim.palette"):
        SimConfig(palette="rainbow")
    with pytest.raises(ConfigError, match="sim.palette"):
        SimConfig(env="gym_hil/PandaPickCube", arm="panda", task="pick_cube", palette="wide")


@pytest.mark.parametrize(("task", "key"), [("pick_place", "cube"), ("reach", "target")])
def test_the_named_objects_cell_follows_its_position_and_the_split(envs, task, key):
    """``layout_cell`` is the work-area cell the named object lies in: a held-out cell exactly
    on the held-out split, and row 0 next to the arm's base."""
    env = envs("so101", task)
    cx, cy = env.arm.work_center_xy
    hx, hy = env.arm.work_half_extent_xy
    seen = set()
    for seed in range(40):
        for split in ("train", "heldout"):
            env.reset(seed=seed, split=split)
            x, y = env.goal_info()[key][:2]
            i, j = env.layout_cell
            assert cx - hx + i * hx / 2 <= x <= cx - hx + (i + 1) * hx / 2
            assert cy - hy + j * hy / 2 <= y <= cy - hy + (j + 1) * hy / 2
            assert ((i, j) in HELDOUT_CELLS) == (split == "heldout")
            seen.add((i, j))
    assert len(seen) >= 12  # the layouts spread over the grid


@pytest.mark.parametrize("task", ["pick_place", "stack", "reach"])
def test_next_cell_puts_the_named_object_in_that_cell_once(envs, task):
    """``next_cell`` places the named object in the cell asked for, on every training cell and
    seed tried, for one reset only; a held-out cell on the training split is refused by name."""
    env = envs("so101", task)
    train_cells = [(i, j) for i in range(4) for j in range(4) if (i, j) not in HELDOUT_CELLS]
    for k, cell in enumerate(train_cells):
        for seed in (k, 100 + k):
            env.next_cell = cell
            env.reset(seed=seed, split="train")
            assert env.layout_cell == cell
    drawn = set()
    for seed in range(20):  # cleared after use: the task draws again
        env.reset(seed=seed, split="train")
        drawn.add(env.layout_cell)
    assert len(drawn) >= 6
    env.next_cell = (0, 1)
    with pytest.raises(ValueError, match=r"cell \[0, 1\] is not a train cell"):
        env.reset(seed=0, split="train")
    env.next_cell = (0, 1)
    env.reset(seed=0, split="heldout")  # the held-out split may be placed there
    assert env.layout_cell == (0, 1)


def test_bad_action_is_rejected_with_the_component_named(envs):
    env = envs("so101", "reach")
    env.reset(seed=0)
    state_before = env.state().copy()
    with pytest.raises(ContractError, match=r"action\[dz\]"):
        env.step(np.array([0.0, 0.0, 0.5, 0.0], np.float32))
    with pytest.raises(ContractError, match=r"expected shape \(4,\)"):
        env.step(np.zeros(6, np.float32))
    with pytest.raises(ContractError, match="finite"):
        env.step(np.array([np.nan, 0, 0, 0], np.float32))
    np.testing.assert_array_equal(env.state(), state_before)  # nothing moved
    assert env.t == 0


@pytest.mark.parametrize(
    "make, key",
    [
        (lambda: SimConfig(arm="ur5"), "sim.arm"),
        (lambda: SimConfig(task="juggle"), "sim.task"),
        (lambda: SimConfig(split="test"), "sim.split"),
        (lambda: SimConfig(control_hz=0.0), "sim.control_hz"),
        (lambda: CameraConfig(views=("front", "top")), "camera.views"),
        (lambda: CameraConfig(height=4), "camera.height"),
        (lambda: SimConfig(home_xy=(0.2,)), "sim.home_xy"),
        (lambda: SimEnv(SimConfig(home_xy=(0.5, 0.0))), "sim.home_xy"),  # out of reach
        (lambda: CameraConfig(front_pos=(0.4, 0.0)), "camera.front_pos"),
        (
            lambda: CameraConfig(front_pos=(0.3, 0, 0.2), front_lookat=(0.3, 0, 0.2)),
            "camera.front_lookat",
        ),
        (lambda: CameraConfig(front_fovy_deg=200.0), "camera.front_fovy_deg"),
        (lambda: ActionConfig(kind="torque"), "action.kind"),
        (lambda: ExpertConfig(p_fail=0.7, p_slow=0.6), "expert"),
        (lambda: ExpertConfig(jaw_gap_m=-0.001), "expert.jaw_gap_m"),
        (lambda: ExpertConfig(jaw_gap_m=0.2), "expert.jaw_gap_m"),
    ],
)
def test_bad_config_is_a_clear_error(make, key):
    with pytest.raises(ConfigError) as e:
        make()
    assert e.value.key == key
    assert key in str(e.value)


def test_the_tool_starts_over_the_configured_home():
    """``home_xy`` moves where the tool rests at reset; the task's layout stays the seed's."""
    envs = [
        SimEnv(SimConfig(randomize=False)),
        SimEnv(SimConfig(randomize=False, home_xy=(0.16, 0.02))),
    ]
    try:
        for env in envs:
            env.reset(seed=7)
        tools = [env.controller.tool_pose(env.data)[0] for env in envs]
        np.testing.assert_allclose(tools[0][:2], envs[0].arm.work_center_xy, atol=2e-3)
        np.testing.assert_allclose(tools[1][:2], (0.16, 0.02), atol=2e-3)
        assert tools[1][2] == pytest.approx(tools[0][2], abs=2e-3)  # the same home height
        cubes = [env.goal_info()["cube"] for env in envs]
        np.testing.assert_allclose(cubes[0], cubes[1])
    finally:
        for env in envs:
            env.close()


def test_front_camera_placement_is_configurable():
    """A configured placement puts the front camera there, looking at the configured point;
    the wrist view and the arm's own placement stay as they were."""
    pos, lookat = (0.44, -0.28, 0.30), (0.19, 0.0, 0.02)
    still = dict(jitter_pos_m=0.0, jitter_rot_rad=0.0)
    envs = [
        SimEnv(SimConfig(task="reach", camera=CameraConfig(**still))),
        SimEnv(
            SimConfig(
                task="reach",
                camera=CameraConfig(
                    front_pos=pos, front_lookat=lookat, front_fovy_deg=45.0, **still
                ),
            )
        ),
    ]
    try:
        obs = [env.reset(seed=3) for env in envs]
        moved = envs[1]
        cam = moved.model.camera("front")
        np.testing.assert_allclose(moved.data.cam_xpos[cam.id], pos, atol=1e-9)
        assert moved.model.cam_fovy[cam.id] == pytest.approx(45.0)
        # MuJoCo cameras look along their -z axis: it points from the camera to the target
        view_dir = -moved.data.cam_xmat[cam.id].reshape(3, 3)[:, 2]
        want = np.subtract(lookat, pos) / np.linalg.norm(np.subtract(lookat, pos))
        np.testing.assert_allclose(view_dir, want, atol=1e-6)
        default = envs[0].model.camera("front").id
        assert not np.allclose(envs[0].data.cam_xpos[default], pos)
        assert not np.array_equal(obs[0].images["front"], obs[1].images["front"])
        np.testing.assert_array_equal(obs[0].images["wrist"], obs[1].images["wrist"])
    finally:
        for env in envs:
            env.close()


def test_sim_robot_implements_the_robot_interface():
    robot = SimRobot(SimConfig(task="reach"))
    assert not robot.is_connected
    assert list(robot.action_features) == ["dx", "dy", "dz", "gripper"]
    assert robot.observation_features == {
        "front": (128, 128, 3),
        "wrist": (128, 128, 3),
        "state": (6,),
    }
    with robot:
        obs = robot.start_episode(seed=0)
        sent = robot.send_action(np.array([0.01, 0, 0, 0.5], np.float32))
        assert sent.dtype == np.float32 and sent[0] == pytest.approx(0.01)
        assert robot.get_observation().step == obs.step + 1
    assert not robot.is_connected


def test_gymnasium_ids_are_registered_and_work():
    ids = register_envs()
    assert set(ids) == set(ENV_IDS) and len(ids) == 8
    env = gym.make("limbic/SO101-Reach-v0")
    obs, info = env.reset(seed=0)
    assert obs["front"].shape == (128, 128, 3) and obs["state"].shape == (6,)
    assert "ball" in info["instruction"] or "sphere" in info["instruction"]
    assert env.observation_space.contains(obs)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert isinstance(reward, float) and not truncated
    env.close()


def test_partial_reach_gives_up_before_the_target(envs):
    env = envs("so101", "reach")
    expert = ScriptedExpert(env, ExpertConfig(p_partial=1.0), seed=1)
    for seed in range(3):
        env.reset(seed=seed)
        assert expert.reset() is ExpertMode.PARTIAL
        closest = np.inf
        for _ in range(env.step_limit):
            r = env.step(expert.act())
            tool, _ = env.controller.tool_pose(env.data)
            closest = min(closest, np.linalg.norm(tool - env.goal_info()["target"]))
            if r.terminated or r.truncated:
                break
        assert r.truncated and not r.success
        assert closest > env.task.tolerance_m


def test_the_diagonal_camera_preset_composes_into_the_training_job():
    from limbic.launch.compose import compose
    from limbic.launch.train import register_schema
    from limbic.runtime.supervisor import TrainConfig

    register_schema()
    cfg = compose("train", ["camera=diagonal"], TrainConfig)
    camera = cfg.robot.sim.camera
    assert camera.front_pos == (0.44, -0.28, 0.30)
    assert camera.front_lookat == (0.19, 0.0, 0.02)
    assert camera.front_fovy_deg == 45.0
    assert camera.image_hw == (128, 128) and camera.views == ("front", "wrist")
    assert compose("train", [], TrainConfig).robot.sim.camera.front_pos is None


def test_observe_again_renders_a_scene_edited_in_place():
    env = SimEnv(SimConfig(task="pick_place", camera=CameraConfig(height=64, width=64)))
    try:
        first = env.reset(seed=11)
        assert env.observe_again().images["front"].tobytes() == first.images["front"].tobytes()
        bowl = env.model.body("bowl").mocapid[0]
        env.data.mocap_pos[bowl, 1] = -env.data.mocap_pos[bowl, 1]
        mujoco.mj_forward(env.model, env.data)
        again = env.observe_again()
        assert not np.array_equal(again.images["front"], first.images["front"])
        assert again.step == first.step == 0
        assert env.observation is again
    finally:
        env.close()


def test_goal_moved_approach_frames_show_the_bowl_elsewhere_and_nothing_else_changes():
    from limbic.sim.counterfactual import ApproachRecorder, goal_body, goal_moved_observations
    from limbic.sim.envs import make_expert

    env = SimEnv(SimConfig(task="pick_place", camera=CameraConfig(height=64, width=64)))
    try:
        expert = make_expert(env, seed=0)
        recorder = ApproachRecorder(env)
        act = recorder.wrap(expert.act)
        frames = [env.reset(seed=1_000_000, split="train")]
        expert.reset()
        gripper = []
        for _ in range(env.step_limit):
            a = act()
            gripper.append(a[-1])
            result = env.step(a)
            frames.append(result.observation)
            if result.terminated or result.truncated:
                break
        recorder.finish()
        assert result.success
        # the grasp: the first action that closes the gripper; every step before it opens it
        g = recorder.grasp_step
        assert gripper[g] > 0.5 and all(c <= 0.5 for c in gripper[:g])
        assert recorder.approach_frames == g + 1 and len(recorder.states) == len(frames)
        qpos, bowl = env.data.qpos.copy(), env.goal_info()["bowl"].copy()
        goal = np.array([bowl[0], -bowl[1]])
        moved = goal_moved_observations(env, recorder, goal)
        assert len(moved) == g + 1 and [o.step for o in moved] == list(range(g + 1))
        for o, f in zip(moved, frames, strict=False):
            np.testing.assert_array_equal(o.state, f.state)  # the arm where it was
            assert o.timestamp_ns == f.timestamp_ns and o.instruction == f.instruction
            assert not np.array_equal(o.images["front"], f.images["front"])  # the bowl moved
        # the env is back at the episode's end: the bowl, the arm, the cube where they were
        np.testing.assert_array_equal(env.data.qpos, qpos)
        np.testing.assert_array_equal(env.goal_info()["bowl"], bowl)
        assert goal_body(env) == "bowl"
    finally:
        env.close()
    reach = SimEnv(SimConfig(task="reach", camera=CameraConfig(height=64, width=64)))
    try:
        with pytest.raises(ValueError, match="no movable goal"):
            goal_body(reach)
    finally:
        reach.close()
