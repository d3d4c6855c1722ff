"""The pre-trained localiser: labelled views from the simulator, its fit, and the actor reading it."""

import json
import time

import numpy as np
import pytest
import torch

from limbic.launch.config import ConfigError
from limbic.policy.rlpd import AgentConfig, ObsShape, RLPDAgent
from limbic.sim.env import SimConfig, SimEnv
from limbic.sim.localise import (
    HELDOUT_COLOR_MARGIN,
    PoseRange,
    goal_position,
    grasp_finder,
    localiser_views,
    object_position,
    random_color,
)
from limbic.sim.scene import CameraConfig
from limbic.sim.tasks import COLORS, HELDOUT_COLORS, TRAIN_COLORS, in_heldout_cell


@pytest.fixture(scope="module")
def env():
    with SimEnv(SimConfig(task="pick_place", camera=CameraConfig(height=64, width=64))) as e:
        yield e


def _unit(env, xy) -> tuple[float, float]:
    (cx, cy), (hx, hy) = env.arm.work_center_xy, env.arm.work_half_extent_xy
    return (xy[0] - (cx - hx)) / (2 * hx), (xy[1] - (cy - hy)) / (2 * hy)


def test_views_are_labelled_with_the_offset_from_the_tool_to_the_object(env):
    step = env.arm.max_ee_step_m
    views = list(localiser_views(env, layouts=3, poses_per_layout=5, seed=11))
    assert len(views) >= 12  # an unreachable pose is skipped, few are
    objects, tools = [], []
    for obs, label in views:
        assert set(obs.images) == {"front", "wrist"}
        assert obs.images["front"].shape == (64, 64, 3)
        # the label is what the simulator says now: the state's joints put the tool there
        q = obs.state[: len(env.kin.qpos_adr)]
        tool, rot = env.kin.fk(q.astype(np.float64))
        obj = tool + label.astype(np.float64) * step
        objects.append(obj)
        tools.append(tool)
        assert obs.state[-1] < 0.9  # jaws open or opening
        np.testing.assert_allclose(rot[:, 2] @ np.array([0, 0, -1.0]), -1.0, atol=1e-2)
    # three layouts: the object stays put within one, the tool does not
    objects, tools = np.array(objects), np.array(tools)
    assert len(np.unique(objects.round(3), axis=0)) == 3
    assert len(np.unique(tools.round(3), axis=0)) == len(views)
    # never inside the object: over it, the tool is above its top
    near = np.linalg.norm(tools[:, :2] - objects[:, :2], axis=1) < 2.5 * env.arm.cube_half_m
    assert np.all(tools[near, 2] > objects[near, 2] + env.arm.cube_half_m)
    # the same seed gives the same views
    again = list(localiser_views(env, layouts=3, poses_per_layout=5, seed=11))
    for (o1, l1), (o2, l2) in zip(views, again, strict=True):
        np.testing.assert_array_equal(l1, l2)
        np.testing.assert_array_equal(o1.images["wrist"], o2.images["wrist"])


def test_a_near_share_puts_that_share_of_the_tool_poses_around_the_object(env):
    step, half = env.arm.max_ee_step_m, env.arm.cube_half_m

    def offsets(poses: PoseRange) -> np.ndarray:
        views = localiser_views(env, layouts=4, poses_per_layout=10, seed=5, poses=poses)
        return np.array([label for _obs, label in views]) * step

    near = offsets(PoseRange(near_share=1.0, near_m=0.04, near_z_high_m=0.05))
    assert len(near) >= 35
    # all within 4 cm of the object along x and y, and low: at most 5 cm up, the object's centre
    # a cube's half above the table
    assert np.abs(near[:, :2]).max() <= 0.04 + 1e-3
    assert (-near[:, 2]).max() <= 0.05 - half + 1e-3
    # never inside it
    over = np.linalg.norm(near[:, :2], axis=1) < 2.5 * half
    assert over.any() and np.all(-near[over, 2] > half)
    # the default draws over the whole work area: most poses are farther than that
    spread = offsets(PoseRange())
    assert np.mean(np.abs(spread[:, :2]).max(-1) > 0.04) > 0.6
    # a half share: some of each
    mixed = np.abs(offsets(PoseRange(near_share=0.5, near_m=0.04))[:, :2]).max(-1) <= 0.04 + 1e-3
    assert 0.3 < mixed.mean() < 0.95
    with pytest.raises(ValueError, match="near_share"):
        PoseRange(near_share=1.5)


def test_views_keep_to_the_split_asked_for(env):
    for split, held in (("train", False), ("heldout", True)):
        for _obs, label in localiser_views(env, 6, 1, seed=3, split=split):
            tool = env.data.site_xpos[env.kin.site_id]
            obj = tool + label * env.arm.max_ee_step_m
            np.testing.assert_allclose(obj, object_position(env), atol=1e-6)
            assert in_heldout_cell(*_unit(env, obj[:2])) is held


def test_random_colours_cover_the_hues_and_keep_away_from_the_heldout_ones():
    rng = np.random.default_rng(0)
    colours = np.array([random_color(rng) for _ in range(3000)])
    assert colours.min() >= 0.0 and colours.max() <= 1.0
    heldout = np.array([COLORS[c] for c in HELDOUT_COLORS])
    gaps = np.linalg.norm(colours[:, None] - heldout[None], axis=-1).min(1)
    assert gaps.min() >= HELDOUT_COLOR_MARGIN
    # every training colour is farther from the held-out ones than the margin asks
    for name in TRAIN_COLORS:
        assert (
            np.linalg.norm(heldout - np.array(COLORS[name]), axis=1).min() >= HELDOUT_COLOR_MARGIN
        )
    # reds, greens and blues all occur: the channel that leads takes every value
    lead = colours.argmax(1)
    assert np.bincount(lead, minlength=3).min() > 500


def test_random_colours_repaint_every_object_of_each_layout(env):
    palette = np.array(list(COLORS.values()))
    seen = []
    labels, images = {}, {}
    for mode in ("task", "random"):
        labels[mode], images[mode] = [], []
        for obs, label in localiser_views(env, 4, 2, seed=9, colors=mode):
            rgb = env.model.geom("cube").rgba[:3].astype(np.float64)
            in_palette = bool(np.isclose(palette, rgb, atol=1e-6).all(1).any())
            assert in_palette == (mode == "task")
            if mode == "random":
                seen.append(rgb.copy())
            labels[mode].append(label)
            images[mode].append(obs.images["wrist"])
    # the colour changes from layout to layout and shows in the views; the poses and labels
    # do not depend on it
    assert len(np.unique(np.round(seen, 4), axis=0)) == 4
    assert not np.array_equal(np.array(images["task"]), np.array(images["random"]))
    np.testing.assert_array_equal(np.array(labels["task"]), np.array(labels["random"]))
    # the next reset paints the split's colours again
    env.reset(seed=9, split="train")
    rgb = env.model.geom("cube").rgba[:3]
    assert np.isclose(palette, rgb, atol=1e-6).all(1).any()
    with pytest.raises(ValueError, match="colors must be one of"):
        next(localiser_views(env, 1, 1, seed=0, colors="rainbow"))


def test_views_can_be_labelled_with_the_goal_as_well(env):
    step = env.arm.max_ee_step_m
    plain = list(localiser_views(env, 3, 4, seed=21))
    both = list(localiser_views(env, 3, 4, seed=21, goal=True))
    assert len(plain) == len(both) >= 10
    goals = []
    for (_o1, l1), (obs, l2) in zip(plain, both, strict=True):
        assert l2.shape == (6,) and l2.dtype == np.float32
        np.testing.assert_array_equal(l1, l2[:3])  # the object's offset comes first, unchanged
        tool = env.kin.fk(obs.state[: len(env.kin.qpos_adr)].astype(np.float64))[0]
        goals.append(tool + l2[3:].astype(np.float64) * step)
    # the goal is the bowl: where the layout put it (the last one's checked against the scene)
    np.testing.assert_allclose(goals[-1], goal_position(env), atol=1e-3)
    np.testing.assert_allclose(goal_position(env), env.goal_info()["bowl"])
    assert len(np.unique(np.round(goals, 3), axis=0)) == 3  # one bowl a layout
    with SimEnv(SimConfig(task="reach", camera=CameraConfig(height=32, width=32))) as reach:
        with pytest.raises(ValueError, match="names no goal"):
            next(localiser_views(reach, 1, 1, seed=0, goal=True))


def test_views_can_be_labelled_with_where_the_tool_grasps(env):
    """``target="grasp"``: the first offset points to the expert's grasp point for the arm as
    posed in the view, clear of the fixed jaw by the gap asked for; the poses, the goal's
    offset and everything else stay as they were."""
    step = env.arm.max_ee_step_m
    plain = list(localiser_views(env, 3, 4, seed=21, goal=True))
    grasped = list(localiser_views(env, 3, 4, seed=21, goal=True, target="grasp"))
    wide = list(localiser_views(env, 3, 4, seed=21, target="grasp", jaw_gap_m=0.0195))
    assert len(plain) == len(grasped) == len(wide) >= 10
    finder = grasp_finder(env)
    for (o1, l1), (o2, l2), (_o3, l3) in zip(plain, grasped, wide, strict=True):
        np.testing.assert_array_equal(o1.state, o2.state)  # the same pose
        np.testing.assert_array_equal(l1[3:], l2[3:])  # the goal's offset unchanged
        shift = (l2[:3] - l1[:3]) * step
        # the one-sided SO-101 gripper: the grasp sits beside the cube's centre, at its depth
        assert 0.005 < np.linalg.norm(shift[:2]) < 0.03 and abs(shift[2]) < 0.005
        # 10 mm more gap: 10 mm further along the same direction
        extra = (l3[:3] - l2[:3]) * step
        assert np.linalg.norm(extra[:2]) == pytest.approx(0.010, abs=2e-4)
        assert float(extra[:2] @ shift[:2]) > 0 and abs(extra[2]) < 1e-6
    # the last view's label against the scene as it was left
    tool = env.kin.fk(grasped[-1][0].state[: len(env.kin.qpos_adr)].astype(np.float64))[0]
    np.testing.assert_allclose(
        tool + grasped[-1][1][:3].astype(np.float64) * step, finder.grasp_target(), atol=1e-3
    )
    with pytest.raises(ValueError, match="target must be one of"):
        next(localiser_views(env, 1, 1, seed=0, target="edge"))
    with SimEnv(SimConfig(task="push", camera=CameraConfig(height=32, width=32))) as push:
        with pytest.raises(ValueError, match="no object to grasp"):
            next(localiser_views(push, 1, 1, seed=0, target="grasp"))


def test_a_task_without_one_object_to_find_is_refused():
    class Scene:
        task = type("Task", (), {"name": "sort"})()

        def goal_info(self):
            return {"bins": np.zeros((3, 3))}

    with pytest.raises(ValueError, match="names no single object"):
        object_position(Scene())


def _agent(chunk_len: int = 1, **cfg) -> RLPDAgent:
    small = dict(d_model=16, n_queries=1, feature_dim=32, hidden=32, n_q=2, q_subset=2)
    return RLPDAgent(AgentConfig(**small, **cfg), ObsShape(2, 4, 8, 4, 16, 4, chunk_len), seed=0)


def _human_batch(tokens: torch.Tensor, state: torch.Tensor) -> dict[str, torch.Tensor]:
    """32 human rows of these tokens and states, with random instructions and actions."""
    return {
        "tokens": tokens[:32],
        "state": state[:32],
        "lang": torch.randn(32, 16),
        "action": torch.rand(32, 4) * 2 - 1,
        "human": torch.ones(32, dtype=torch.bool),
    }


def _labelled(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens whose view-1 token 2 carries the offset (plus noise elsewhere)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(rows, 2, 4, 8, generator=g)
    offset = torch.randn(rows, 3, generator=g) * 2.0
    tokens[:, 1, 2, :3] = offset
    return tokens, torch.randn(rows, 4, generator=g), offset


def test_the_fitted_localiser_is_frozen_and_read_detached_by_the_actor():
    agent = _agent(
        waypoint_source="pretrained", waypoint_input=True, token_noise=1.0, state_dropout=0.5
    )
    enc = agent.actor_encoder
    assert enc.waypoint_dim == 3 and enc.feature_dim == 35
    assert agent.critic_encoder.waypoint_dim == 0
    tokens, state, offset = _labelled(3000, seed=0)
    report = agent.fit_localiser(tokens, state, offset, steps=400, holdout=0.2, lr=3e-3)
    # it learned the offset, on rows it was not fitted on too
    assert report["holdout_error"] < 0.25 * report["holdout_error_mean_label"]
    assert report["fit_error"] < 0.25 * report["fit_error_mean_label"]
    # the acting copy has the same localiser
    for e, p in zip(
        agent.ema_encoder.waypoint_head.parameters(), enc.waypoint_head.parameters(), strict=True
    ):
        assert torch.equal(e, p)
    # training reads it on clean tokens and the clean state, as acting does
    batch = _human_batch(tokens, state)
    seen = agent.augment(batch)
    assert torch.equal(seen["waypoint_tokens"], tokens[:32])
    assert torch.equal(seen["waypoint_state"], state[:32])
    assert not torch.allclose(seen["tokens"], tokens[:32])
    feature = enc(
        seen["tokens"],
        seen["state"],
        seen["lang"],
        waypoint_tokens=seen["waypoint_tokens"],
        waypoint_state=seen["waypoint_state"],
    )
    assert torch.equal(feature[:, -3:], enc.locate(tokens[:32], state[:32]))
    # no later loss moves it: cloning trains the rest of the actor
    before = [p.detach().clone() for p in enc.waypoint_head.parameters()]
    proj = enc.proj.weight.detach().clone()
    for _ in range(5):
        agent.bc_update(batch)
    assert all(
        torch.equal(b, p) for b, p in zip(before, enc.waypoint_head.parameters(), strict=True)
    )
    assert not torch.equal(proj, enc.proj.weight)
    for e, p in zip(
        agent.ema_encoder.waypoint_head.parameters(), enc.waypoint_head.parameters(), strict=True
    ):
        assert torch.equal(e, p)


def test_fit_localiser_refuses_what_it_cannot_fit():
    with pytest.raises(RuntimeError, match="waypoint_source=pretrained"):
        _agent().fit_localiser(*_labelled(10, 0), steps=1)
    agent = _agent(waypoint_source="pretrained", waypoint_input=True)
    tokens, state, offset = _labelled(10, 0)
    with pytest.raises(ValueError, match="one row each"):
        agent.fit_localiser(tokens, state[:5], offset, steps=1)
    with pytest.raises(ValueError, match="3 components"):
        agent.fit_localiser(tokens, state, offset[:, :2], steps=1)
    with pytest.raises(ValueError, match="steps"):
        agent.fit_localiser(tokens, state, offset, steps=0)


def test_a_localiser_of_the_goal_predicts_both_offsets_for_the_actor():
    agent = _agent(waypoint_source="pretrained", waypoint_input=True, localise_goal=True)
    enc = agent.actor_encoder
    assert enc.waypoint_dim == 6 and enc.feature_dim == 38
    tokens, state, offset = _labelled(3000, seed=1)
    goal = torch.randn(3000, 3, generator=torch.Generator().manual_seed(2))
    tokens[:, 0, 1, :3] = goal
    label = torch.cat([offset, goal], dim=-1)
    with pytest.raises(ValueError, match="expected 6 components"):
        agent.fit_localiser(tokens, state, offset, steps=1)
    report = agent.fit_localiser(tokens, state, label, steps=400, holdout=0.2, lr=3e-3)
    assert report["holdout_error"] < 0.25 * report["holdout_error_mean_label"]
    # each offset measured on its own components
    rows = slice(2400, 3000)
    parts = [
        agent.localiser_error(tokens[rows], state[rows], label[rows], part)
        for part in (slice(0, 3), slice(3, 6))
    ]
    assert all(0 < e < 0.5 for e in parts)
    assert agent.localiser_error(tokens[rows], state[rows], label[rows]) <= max(parts)
    feature = agent.actor_encoder(tokens[:8], state[:8], torch.randn(8, 16))
    assert torch.equal(feature[:, -6:], enc.locate(tokens[:8], state[:8]))


def test_a_straight_path_takes_the_localisers_offset_to_the_first_move():
    agent = _agent(waypoint_source="pretrained", waypoint_input=True, localiser_skip=True)
    tokens, state, offset = _labelled(3000, seed=0)
    agent.fit_localiser(tokens, state, offset, steps=200, holdout=0.2, lr=3e-3)
    actor = agent.actor
    assert actor.skip_dim == 3 and actor.skip.weight.shape == (4, 3)
    feature = agent.actor_encoder(tokens[:16], state[:16], torch.randn(16, 16))
    located = feature[:, -3:]
    mean, _ = actor.distribution(feature)
    own, _ = actor.net(feature).chunk(2, dim=-1)
    # it starts as the identity: the offset's x, y, z go to dx, dy, dz, and nothing to the gripper
    assert torch.allclose(mean - own, torch.cat([located, torch.zeros(16, 1)], dim=-1), atol=1e-6)
    # the acting copy has it, and cloning trains it
    assert torch.equal(agent.ema_actor.skip.weight, actor.skip.weight)
    batch = _human_batch(tokens, state)
    before = actor.skip.weight.detach().clone()
    for _ in range(3):
        agent.bc_update(batch)
    assert not torch.equal(before, actor.skip.weight)
    # without the option the head has no such map
    assert _agent(waypoint_source="pretrained", waypoint_input=True).actor.skip_dim == 0


def test_a_chunk_starts_the_straight_path_at_its_first_action_only():
    agent = _agent(3, waypoint_source="pretrained", waypoint_input=True, localiser_skip=True)
    weight = agent.actor.skip.weight
    assert weight.shape == (12, 3)
    assert torch.equal(weight[:3], torch.eye(3)) and not weight[3:].any()


def test_the_straight_path_needs_an_end_effector_action_space():
    from limbic.contracts import ActionKind, ActionSpec
    from limbic.policy.vla import PolicyConfig, VLAPolicy

    agent = AgentConfig(waypoint_source="pretrained", waypoint_input=True, localiser_skip=True)
    joints = ActionSpec(
        ActionKind.JOINT_DELTA,
        ("d_a", "d_b", "d_c", "d_d", "gripper"),
        np.array([-0.1] * 4 + [0.0]),
        np.array([0.1] * 4 + [1.0]),
    )
    with pytest.raises(ValueError, match="policy.agent.localiser_skip.*d_a"):
        VLAPolicy(PolicyConfig(agent=agent), joints, 6)


def test_pretrained_source_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="agent.localise_goal"):
        AgentConfig(localise_goal=True)
    with pytest.raises(ConfigError, match="agent.localiser_target"):
        AgentConfig(localiser_target="grasp")
    with pytest.raises(ConfigError, match="agent.localiser_target"):
        AgentConfig(waypoint_source="pretrained", waypoint_input=True, localiser_target="edge")
    with pytest.raises(ConfigError, match="agent.waypoint_input"):
        AgentConfig(waypoint_source="pretrained")
    with pytest.raises(ConfigError, match="agent.waypoint_weight"):
        AgentConfig(waypoint_source="pretrained", waypoint_input=True, waypoint_weight=1.0)
    with pytest.raises(ConfigError, match="agent.localiser_skip.*pretrained"):
        AgentConfig(localiser_skip=True)
    with pytest.raises(ConfigError, match="agent.localiser_skip.*head_components"):
        AgentConfig(
            waypoint_source="pretrained",
            waypoint_input=True,
            localiser_skip=True,
            head_components=2,
        )
    AgentConfig(waypoint_source="pretrained", waypoint_input=True)  # fine
    from limbic.runtime.learn import LocaliserConfig

    with pytest.raises(ConfigError, match="localiser.near_share"):
        LocaliserConfig(near_share=-0.1)
    with pytest.raises(ConfigError, match="localiser.near_m"):
        LocaliserConfig(near_m=0.0)
    with pytest.raises(ConfigError, match="localiser.colors"):
        LocaliserConfig(colors="rainbow")
    assert LocaliserConfig(near_share=0.25, near_m=0.03).pose_range() == PoseRange(
        near_share=0.25, near_m=0.03
    )


@pytest.mark.parametrize(
    ("goal", "target", "skip"),
    [(False, "object", False), (True, "object", True), (False, "grasp", False)],
    ids=["object", "object_and_goal_with_a_straight_path", "grasp"],
)
def test_the_learning_loop_fits_the_localiser_before_cloning(tmp_path, goal, target, skip):
    from test_learning import SMALL_AGENT, reach_config, reload_and_compare

    from limbic.launch.components import RobotConfig
    from limbic.policy.vla import PolicyConfig
    from limbic.runtime.evaluation import approach_error, play
    from limbic.runtime.learn import Learner, LocaliserConfig
    from limbic.runtime.rollout import run_episode

    agent = AgentConfig(
        **{
            **SMALL_AGENT.__dict__,
            "waypoint_source": "pretrained",
            "waypoint_input": True,
            "localise_goal": goal,
            "localiser_target": target,
            "localiser_skip": skip,
        }
    )
    sim = SimConfig(task="pick_place", camera=CameraConfig(height=64, width=64))
    cfg = reach_config(
        tmp_path,
        robot=RobotConfig(sim=sim),
        demos=2,
        bc_pretrain_steps=2,
        policy=PolicyConfig(agent=agent, image_hw=(64, 64)),
        localiser=LocaliserConfig(
            layouts=10, poses=4, steps=150, heldout_layouts=3, near_share=0.5
        ),
    )
    learner = Learner(cfg)
    try:
        head = learner.policy.agent.actor_encoder.waypoint_head
        untrained = [p.detach().clone() for p in head.parameters()]
        learner.collect_demos()
        report = json.loads((tmp_path / "run" / "localiser.json").read_text())
        assert report["views"] >= 36
        assert {"fit_mm", "holdout_mm", "holdout_mean_label_mm", "heldout_split_mm"} <= set(report)
        # half the poses were drawn near the cube: the held-back layouts have such views
        assert report["holdout_near_views"] >= 1
        assert np.isfinite(report["holdout_near_mm"])
        assert report["fit_mm"] < report["holdout_mean_label_mm"]
        # a localiser of the goal too: each offset's own figures
        per_part = {"holdout_object_mm", "holdout_goal_mm"}
        per_part |= {"heldout_split_object_mm", "heldout_split_goal_mm"}
        if goal:
            assert per_part <= set(report)
            assert all(np.isfinite(report[k]) for k in per_part)
        else:
            assert not per_part & set(report)
        assert head[-1].out_features == (6 if goal else 3)
        assert not all(torch.equal(u, p) for u, p in zip(untrained, head.parameters(), strict=True))
        learner.pretrain(2)
        # the checkpoint carries it: a loaded policy acts the same
        loaded = reload_and_compare(learner, tmp_path / "policy.pt")
        assert torch.equal(
            loaded.agent.ema_encoder.waypoint_head[0].weight,
            learner.policy.agent.ema_encoder.waypoint_head[0].weight,
        )
        if skip:  # the straight path from the offset, trained and restored
            trained = learner.policy.agent.ema_actor.skip.weight
            assert trained.shape == (4 * learner.cfg.policy.chunk_len, 6)
            assert torch.equal(loaded.agent.ema_actor.skip.weight, trained)
        # evaluations report its error along their approaches
        result = learner.evaluate(0, time.monotonic())
        assert len(result.localiser_mm) == 3 and np.all(np.isfinite(result.localiser_mm))
        # and, pick-and-place carrying its cube, how every episode ended
        assert sum(result.outcomes.values()) == learner.cfg.eval_episodes
        # measured against the simulator's offset, up to the first close: a localiser that says
        # 0 everywhere errs by the offset itself
        head = learner.policy.agent.ema_encoder.waypoint_head
        with torch.no_grad():
            head[-1].weight.zero_()
            head[-1].bias.zero_()
        env, tools, start = learner.env, [], {}

        def act(obs, tokens, lang):
            tools.append(env.data.site_xpos[env.kin.site_id].copy())
            action = np.zeros(env.action_spec.dim, np.float32)
            action[:-1] = 0.5 * env.action_spec.high[:-1]
            action[-1] = 1.0 if obs.step >= 3 else 0.0  # the gripper closes on the fourth step
            return action

        ep = run_episode(
            env,
            act,
            learner.featurize,
            learner.lang,
            seed=1,
            split="train",
            on_reset=lambda: start.update(obj=object_position(env)),
        )
        error = approach_error(env, learner.policy, ep, start["obj"])
        assert error[3] == 4
        offsets = (start["obj"] - np.array(tools[:4])) / env.arm.max_ee_step_m
        assert len(np.unique(offsets.round(4), axis=0)) == 4  # the tool moved
        # (the state keeps the joints in float32: a fraction of a millimetre)
        np.testing.assert_allclose(error[:3], np.abs(offsets).sum(0), atol=0.05)
        # an evaluation measures a grasp-target localiser against the grasp point, frame by
        # frame (it moves with the jaws), and any other against the object's centre
        finder, seen = grasp_finder(env), []

        def watched(obs, tokens, lang):
            point = finder.grasp_target() if target == "grasp" else object_position(env)
            seen.append(point - env.data.site_xpos[env.kin.site_id])
            return act(obs, tokens, lang)

        tools.clear()
        _, located, _ = play(
            env, learner.policy, learner.featurize, learner.lang, 1, "train", act=watched
        )
        assert located[3] == 4
        expected = np.abs(np.array(seen[:4])).sum(0) / env.arm.max_ee_step_m
        np.testing.assert_allclose(located[:3], expected, atol=0.05)
    finally:
        learner.close()
    # another simulator has no labels to fit on
    from limbic.sim.env import HIL_PICK_CUBE

    hil = RobotConfig(sim=SimConfig(env=HIL_PICK_CUBE, arm="panda", task="pick_cube"))
    with pytest.raises(ConfigError, match="policy.agent.waypoint_source"):
        reach_config(tmp_path, robot=hil, policy=PolicyConfig(agent=agent))
