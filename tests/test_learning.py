"""The learning loop on the real sim: BC pre-training, a short RL run, exact checkpoints."""

import numpy as np
import pytest
import torch

from limbic.launch.components import RobotConfig
from limbic.launch.config import ConfigError
from limbic.policy.rlpd import AgentConfig
from limbic.policy.vla import PolicyConfig, VLAPolicy
from limbic.runtime.evaluation import EVAL_SEED
from limbic.runtime.learn import LearnConfig, Learner
from limbic.runtime.rollout import run_episode
from limbic.sim.env import HIL_PICK_CUBE, SimConfig
from limbic.sim.expert import ExpertConfig
from limbic.sim.tasks import HELDOUT_CELLS

SMALL_AGENT = AgentConfig(
    d_model=32, n_queries=2, feature_dim=128, hidden=128, n_q=2, q_subset=2, critic_warmup=0
)


def reach_config(tmp_path, **kw) -> LearnConfig:
    base = dict(
        robot=RobotConfig(sim=SimConfig(task="reach")),
        policy=PolicyConfig(agent=SMALL_AGENT),
        demos=40,
        batch_size=64,
        bc_pretrain_steps=500,
        online_episodes=6,
        utd=0.5,
        eval_episodes=10,
        eval_split="train",
        out_dir=str(tmp_path / "run"),
        videos=0,
        progress=False,
        threads=1,
    )
    base.update(kw)
    return LearnConfig(**base)


def pick_place_config(tmp_path, **kw) -> LearnConfig:
    """``reach_config`` on pick-and-place, with 64x64 views."""
    from limbic.sim.scene import CameraConfig

    sim = SimConfig(task="pick_place", camera=CameraConfig(height=64, width=64))
    policy = PolicyConfig(agent=SMALL_AGENT, image_hw=(64, 64))
    return reach_config(tmp_path, robot=RobotConfig(sim=sim), policy=policy, **kw)


def demo_action_error(learner: Learner) -> float:
    """Mean squared error of the deterministic policy on the stored demonstration actions."""
    p = learner.replay.partitions["demo"]
    rows = np.arange(p.size)
    tokens = torch.from_numpy(p.tokens[p.obs[rows]].astype(np.float32))
    state = torch.from_numpy(p.state[p.obs[rows]])
    lang = torch.from_numpy(learner.replay.lang_table[p.lang[p.obs[rows]]])
    pred = learner.policy.agent.act(tokens, state, lang, deterministic=True).numpy()
    return float(((pred - p.action[rows]) ** 2).sum(-1).mean())


def success_rate(learner: Learner, episodes: int) -> float:
    wins = [
        run_episode(
            learner.env,
            learner.policy_action(True),
            learner.featurize,
            learner.lang,
            seed=5000 + i,
            split="train",
        ).success
        for i in range(episodes)
    ]
    return float(np.mean(wins))


@pytest.mark.slow
def test_bc_then_rl_improves_reach_over_the_untrained_policy(tmp_path):
    learner = Learner(reach_config(tmp_path))
    try:
        untrained = success_rate(learner, 10)
        learner.collect_demos()
        before = demo_action_error(learner)
        learner.pretrain(learner.cfg.bc_pretrain_steps)
        after = demo_action_error(learner)
        assert after < 0.5 * before, (before, after)  # BC pre-training fits the demonstrations
        result_rate = None
        for i in range(learner.cfg.online_episodes):
            ep = run_episode(
                learner.env,
                learner.policy_action(False),
                learner.featurize,
                learner.lang,
                seed=100 + i,
                split="train",
            )
            learner._store("online", ep)
            for _ in range(max(1, len(ep) // 2)):
                learner.policy.agent.update(learner._batch())
        result_rate = success_rate(learner, 10)
        assert result_rate > untrained, (untrained, result_rate)
        assert learner.replay.partitions["online"].episodes == learner.cfg.online_episodes
    finally:
        learner.close()


def reload_and_compare(learner: Learner, path) -> VLAPolicy:
    """Save ``learner``'s policy to ``path``, load it back and check that it acts exactly the same
    on a fresh observation; returns the loaded copy."""
    learner.policy.save(path)
    loaded = VLAPolicy.load(path, backbone=learner.policy.backbone)
    obs = learner.env.reset(seed=3)
    images = torch.from_numpy(np.stack([obs.images[v] for v in learner.policy.views]))[None]
    state = torch.from_numpy(obs.state)[None]
    lang = learner.lang(obs.instruction)
    torch.testing.assert_close(
        loaded(images, state, lang), learner.policy(images, state, lang), rtol=0, atol=0
    )
    return loaded


def test_checkpoint_reproduces_actions_and_training_state_exactly(tmp_path):
    learner = Learner(reach_config(tmp_path, demos=2, bc_pretrain_steps=5))
    try:
        learner.collect_demos()
        learner.pretrain(5)
        for _ in range(3):
            learner.policy.agent.update(learner._batch())
        path = tmp_path / "policy.pt"
        loaded = reload_and_compare(learner, path)
        assert loaded.agent.updates == learner.policy.agent.updates == 3
        # training resumes identically: the same batch gives the same update on both copies
        batch = learner._batch()
        m1 = learner.policy.agent.update({k: v.clone() for k, v in batch.items()})
        m2 = loaded.agent.update({k: v.clone() for k, v in batch.items()})
        assert m1 == m2
        torch.testing.assert_close(
            loaded.agent.actor.net[0].weight,
            learner.policy.agent.actor.net[0].weight,
            rtol=0,
            atol=0,
        )
        # a checkpoint from before the compressor scaled its tokens loads with the unit scale
        assert learner.policy.compressor.scale.item() != 1.0
        ckpt = torch.load(path, weights_only=True)
        del ckpt["weights"]["compressor.scale"]
        del ckpt["weights"]["compressor.axis_scale"]  # nor per-axis spreads (whitening)
        torch.save(ckpt, tmp_path / "old.pt")
        old = VLAPolicy.load(tmp_path / "old.pt", backbone=learner.policy.backbone)
        assert old.compressor.scale.item() == 1.0
        assert torch.equal(old.compressor.axis_scale, torch.ones_like(old.compressor.axis_scale))
        # one from before the acting average acts with its live actor
        for store in (ckpt["weights"], ckpt["agent"]["model"]):
            for key in [k for k in store if "ema_" in k]:
                del store[key]
        torch.save(ckpt, tmp_path / "older.pt")
        older = VLAPolicy.load(tmp_path / "older.pt", backbone=learner.policy.backbone)
        agent = older.agent
        for ema, live in ((agent.ema_actor, agent.actor), (agent.ema_encoder, agent.actor_encoder)):
            for e, p in zip(ema.parameters(), live.parameters(), strict=True):
                assert torch.equal(e, p)
    finally:
        learner.close()


def test_policy_is_servable_and_inside_the_action_bounds(tmp_path):
    from limbic.runtime.servable import policy_spec

    learner = Learner(reach_config(tmp_path, demos=1))
    try:
        spec = policy_spec(learner.policy)
        assert spec.views == ("front", "wrist") and spec.action_dim == 4
        obs = learner.env.reset(seed=0)
        images = torch.from_numpy(np.stack([obs.images[v] for v in learner.policy.views]))[None]
        out = learner.policy(
            images, torch.from_numpy(obs.state)[None], learner.lang(obs.instruction)
        )
        assert out.shape == (1, 1, 4)
        learner.env.action_spec.validate(out[0, 0].numpy())
    finally:
        learner.close()


def test_online_episodes_with_a_watching_human_feed_the_intervention_partition(tmp_path):
    """With ``interventions``, the scripted human takes over an untrained policy; its steps are
    human rows of the replay (the BC term imitates them) and the curve reports its share."""
    cfg = reach_config(
        tmp_path,
        demos=2,
        bc_pretrain_steps=0,
        online_episodes=3,
        eval_episodes=1,
        interventions=True,
    )
    learner = Learner(cfg)
    try:
        result = learner.run()
        online = learner.replay.partitions["online"]
        interv = learner.replay.partitions["intervention"]
        assert interv.size > 0 and interv.size + online.size == learner.played_steps
        assert interv.size == learner.human_steps
        assert 0.0 < result.curve[-1].human_share <= 1.0
        assert result.curve[-1].human_share == pytest.approx(interv.size / learner.played_steps)
        batch = learner.replay.sample(64, np.random.default_rng(0), learner.reward, 0.9)
        assert batch["human"].sum() == 32  # demonstrations and interventions share the human half
    finally:
        learner.close()


def test_the_watching_human_grasps_where_the_demonstrations_do(tmp_path):
    """The scripted human who takes over aims its grasps as the demonstrator does: it leaves the
    demonstrating expert's gap at the fixed jaw (``demo_expert.jaw_gap_m``), so the corrections
    and the demonstrations teach one grasp point."""
    cfg = reach_config(
        tmp_path, demos=1, interventions=True, demo_expert=ExpertConfig(jaw_gap_m=0.012)
    )
    learner = Learner(cfg)
    try:
        assert learner.arbiter.expert.cfg.jaw_gap_m == 0.012
    finally:
        learner.close()


def test_chunked_policy_executes_open_loop_and_learns_from_windows(tmp_path):
    """``chunk_len=3, execute=2``: one inference per two steps, the replay holds 3-step windows,
    and the RL update runs on them."""
    cfg = reach_config(
        tmp_path,
        policy=PolicyConfig(agent=SMALL_AGENT, chunk_len=3, execute=2),
        demos=2,
        bc_pretrain_steps=3,
    )
    learner = Learner(cfg)
    try:
        learner.collect_demos()
        learner.pretrain(3)
        demo = learner.replay.partitions["demo"]
        assert demo.action.shape[1] == 3 * 4 and demo.steps[: demo.size].max() == 3
        calls: list[int] = []
        act_tokens = learner.policy.act_tokens

        def counted(*args, **kwargs):
            calls.append(1)
            return act_tokens(*args, **kwargs)

        learner.policy.act_tokens = counted
        ep = run_episode(
            learner.env, learner.policy_action(False), learner.featurize, learner.lang, seed=7
        )
        assert len(calls) == (len(ep) + 1) // 2  # an inference every second step
        learner._store("online", ep)
        metrics = learner.policy.agent.update(learner._batch())
        assert np.isfinite(metrics["critic_loss"])
        chunk = learner.policy.act_tokens(
            torch.from_numpy(ep.tokens[:1].astype(np.float32)),
            torch.from_numpy(ep.state[:1]),
            learner.lang(ep.instruction),
        )
        assert chunk.shape == (1, 3, 4)
    finally:
        learner.close()
    with pytest.raises(ValueError, match="policy.execute"):
        PolicyConfig(chunk_len=2, execute=3)


def expert_episode(learner: Learner, seed: int):
    """An episode of the scripted expert in the learner's simulator (a success on reach)."""
    from limbic.sim.envs import make_expert
    from limbic.sim.expert import ExpertConfig

    expert = make_expert(learner.env, ExpertConfig(), seed=7)
    return run_episode(
        learner.env,
        lambda _obs, _tokens, _lang: expert.act(),
        learner.featurize,
        learner.lang,
        seed=seed,
        split="train",
        on_reset=expert.reset,
    )


@pytest.mark.parametrize("imitate", [True, False])
def test_self_imitation_copies_only_the_policys_successes_to_the_demonstrations(tmp_path, imitate):
    """``imitate_successes``: an online episode that succeeded is in the online partition and,
    as human rows the BC term imitates, in the demonstration partition; a failure only online."""
    cfg = reach_config(tmp_path, demos=2, bc_pretrain_steps=0, imitate_successes=imitate)
    learner = Learner(cfg)
    try:
        learner.collect_demos()
        demo, online = learner.replay.partitions["demo"], learner.replay.partitions["online"]
        demo_steps = demo.size
        hold = np.zeros(learner.env.action_spec.low.shape, np.float32)
        episodes = {
            "success": expert_episode(learner, seed=9000),
            "failure": run_episode(
                learner.env,
                lambda _obs, _tokens, _lang: hold,
                learner.featurize,
                learner.lang,
                seed=9001,
                split="train",
            ),
        }
        assert episodes["success"].success and not episodes["failure"].success
        learner._store("online", episodes["success"])
        copied = len(episodes["success"]) if imitate else 0
        assert demo.size == demo_steps + copied
        assert online.size == len(episodes["success"])
        learner._store("online", episodes["failure"])
        assert demo.size == demo_steps + copied  # a failure is never imitated
        assert online.size == len(episodes["success"]) + len(episodes["failure"])
        assert learner.evaluate(0, 0.0).imitated == int(imitate)
        if imitate:  # the copy is the episode itself, actions and all
            rows = np.arange(demo_steps, demo.size)
            assert np.array_equal(demo.action[rows], online.action[: len(rows)])
    finally:
        learner.close()


def test_evaluation_counts_successes_by_the_named_objects_cell(tmp_path):
    """The evaluation's ``by_cell`` holds every episode once, under the cell its layout put the
    named object in (held-out cells only, on the held-out split), and the same successes as the
    success rate."""
    cfg = reach_config(
        tmp_path, demos=2, bc_pretrain_steps=0, eval_episodes=6, eval_split="heldout"
    )
    learner = Learner(cfg)
    try:
        learner.collect_demos()
        result = learner.evaluate(0, 0.0)
        expected: dict[str, int] = {}
        for i in range(cfg.eval_episodes):
            learner.env.reset(seed=EVAL_SEED + i, split="heldout")
            i_x, j_y = learner.env.layout_cell
            expected[f"{i_x},{j_y}"] = expected.get(f"{i_x},{j_y}", 0) + 1
        assert {key: n for key, (_, n) in result.by_cell.items()} == expected
        assert all(tuple(map(int, key.split(","))) in HELDOUT_CELLS for key in result.by_cell)
        won = sum(w for w, _ in result.by_cell.values())
        assert won == round(result.success_rate * cfg.eval_episodes)
        assert all(0 <= w <= n for w, n in result.by_cell.values())
    finally:
        learner.close()


@pytest.mark.parametrize("assisted", [True, False])
def test_assisted_imitation_copies_the_policys_steps_after_the_last_handback(tmp_path, assisted):
    """``imitate_assisted``: in an online episode a human stepped into and that succeeded, the
    steps after the human's last hand-back are copied to the demonstrations; the human's steps
    stay interventions, the policy's earlier steps online only; an assisted failure copies none."""
    cfg = reach_config(
        tmp_path, demos=1, bc_pretrain_steps=0, imitate_successes=True, imitate_assisted=assisted
    )
    learner = Learner(cfg)
    try:
        learner.collect_demos()
        demo = learner.replay.partitions["demo"]
        demo_steps = demo.size
        ep = expert_episode(learner, seed=9000)
        t = len(ep)
        assert ep.success and t >= 4
        ep.intervention = np.zeros(t, bool)
        ep.intervention[1] = True  # the human took step 1; the policy went on from step 2
        learner._store("online", ep)
        copied = t - 2 if assisted else 0
        assert demo.size == demo_steps + copied
        assert learner.replay.partitions["intervention"].size == 1
        assert learner.replay.partitions["online"].size == t - 1
        assert learner.evaluate(0, 0.0).assisted == int(assisted)
        assert learner.imitated == 0  # not a success the policy ran alone
        if assisted:  # the copy starts at the step after the hand-back
            rows = np.arange(demo_steps, demo.size)
            np.testing.assert_array_equal(demo.action[rows[0]], ep.action[2])
        ep.success = False  # an assisted failure teaches no one
        learner._store("online", ep)
        assert demo.size == demo_steps + copied
    finally:
        learner.close()
    with pytest.raises(ConfigError, match="imitate_assisted"):
        reach_config(tmp_path, imitate_assisted=True)


@pytest.mark.parametrize("explore", [True, False])
def test_online_episodes_sample_unless_explore_is_off(tmp_path, explore):
    """``explore``: online episodes take sampled actions by default; with ``explore=false`` the
    actor's mean, so an online episode plays exactly as the evaluation would on its seed."""
    cfg = reach_config(
        tmp_path,
        demos=1,
        bc_pretrain_steps=0,
        online_episodes=1,
        utd=0.01,
        eval_every=100,
        eval_episodes=1,
        explore=explore,
    )
    learner = Learner(cfg)
    asked: list[bool] = []
    policy_action = learner.policy_action

    def recording(deterministic: bool):
        asked.append(deterministic)
        return policy_action(deterministic)

    learner.policy_action = recording
    try:
        learner.run()
    finally:
        learner.close()
    # evaluations (before and after) are deterministic; the one online episode follows explore
    assert asked == [True, not explore, True]


def test_dart_demonstrations_record_the_experts_action_while_the_arm_executes_a_noisy_one(
    tmp_path,
):
    """``demo_noise``: the arm executes the expert's action plus noise on the motion components
    (the gripper's untouched, bounds kept); the record keeps the expert's own action, and the
    states show the drift."""
    from limbic.runtime.rollout import demo_perturbation
    from limbic.sim.envs import make_expert
    from limbic.sim.expert import ExpertConfig

    learner = Learner(reach_config(tmp_path, demos=1, bc_pretrain_steps=0))
    try:
        env, spec = learner.env, learner.env.action_spec
        assert demo_perturbation(spec, 0.0, np.random.default_rng(0)) is None
        perturb = demo_perturbation(spec, 0.5, np.random.default_rng(0))
        noise = np.stack([perturb(np.zeros_like(spec.low)) for _ in range(4000)])
        assert np.all(noise >= spec.low) and np.all(noise <= spec.high)
        assert np.all(noise[:, -1] == 0.0)  # the gripper is left alone
        bound = np.maximum(np.abs(spec.low), np.abs(spec.high))[:-1]
        assert np.all(noise[:, :-1].std(0) > 0.3 * bound)  # clipped at the bound, not below it

        def record(noise_fraction: float):
            expert = make_expert(env, ExpertConfig(), seed=3)
            said, executed = [], []
            perturb = demo_perturbation(spec, noise_fraction, np.random.default_rng(1))

            def act(_obs, _tokens, _lang):
                said.append(expert.act())
                return said[-1]

            def noisy(action):
                executed.append(perturb(action))
                return executed[-1]

            ep = run_episode(
                env,
                act,
                learner.featurize,
                learner.lang,
                seed=11,
                split="train",
                on_reset=expert.reset,
                keep_observations=True,
                perturb=noisy if perturb is not None else None,
            )
            return ep, np.stack(said), np.stack(executed) if executed else None

        clean, _, _ = record(0.0)
        ep, said, executed = record(0.5)
        recorded = spec.low + (ep.action + 1.0) * 0.5 * (spec.high - spec.low)
        assert np.allclose(recorded, said, atol=1e-6)  # the expert's action, not the executed one
        assert np.allclose(ep.env_action, said, atol=1e-6)  # what a dataset on disk would keep
        assert np.abs(executed - said)[:, :-1].max() > 0.2 * bound.min()
        assert np.array_equal(executed[:, -1], said[:, -1])
        steps = min(len(ep), len(clean))
        assert not np.allclose(ep.state[:steps], clean.state[:steps])  # the arm drifted
    finally:
        learner.close()
    with pytest.raises(ValueError, match="learn.demo_noise"):
        reach_config(tmp_path, demo_noise=1.5)


def test_the_demonstrations_expert_is_configurable(tmp_path):
    """``demo_expert`` is the expert that records the demonstrations: a slower one takes more
    steps over the same layouts, and every demonstration still succeeds."""
    from limbic.sim.expert import ExpertConfig

    steps = {}
    for speed in (1.0, 0.4):
        learner = Learner(
            reach_config(tmp_path / str(speed), demos=2, demo_expert=ExpertConfig(speed=speed))
        )
        try:
            learner.collect_demos()
            demo = learner.replay.partitions["demo"]
            steps[speed] = demo.size
            assert demo.reward[: demo.size].sum() == 2  # one success step ends each episode
        finally:
            learner.close()
    assert steps[0.4] > 1.5 * steps[1.0]


def test_goal_moved_demo_copies_keep_the_actions_and_change_only_the_approach(tmp_path):

    cfg = pick_place_config(tmp_path, demos=2, demo_goal_moves=2)
    learner = Learner(cfg)
    stored = []
    store = learner._store
    learner._store = lambda source, ep: (stored.append((source, ep)), store(source, ep))
    try:
        learner.collect_demos()
        assert [s for s, _ in stored] == ["demo"] * 6  # each demonstration and two copies
        assert learner.replay.partitions["demo"].episodes == 6
        for d in range(2):
            original, *copies = (ep for _, ep in stored[3 * d : 3 * d + 3])
            grasp = int(np.argmax(original.action[:, -1] > 0))  # normalised: closing is > 0
            assert 0 < grasp < len(original) - 1
            for copy in copies:
                np.testing.assert_array_equal(copy.action, original.action)
                np.testing.assert_array_equal(copy.state, original.state)
                np.testing.assert_array_equal(copy.reward, original.reward)
                assert copy.instruction == original.instruction
                for t in range(grasp + 1):  # the approach: the bowl elsewhere
                    assert not np.array_equal(copy.tokens[t], original.tokens[t])
                np.testing.assert_array_equal(
                    copy.tokens[grasp + 1 :], original.tokens[grasp + 1 :]
                )
            assert not np.array_equal(copies[0].tokens[0], copies[1].tokens[0])  # two places
    finally:
        learner.close()
    with pytest.raises(Exception, match="demo_goal_moves"):
        reach_config(tmp_path, demo_goal_moves=1)


def test_demonstrations_can_start_the_tool_anywhere_over_the_work_area(tmp_path):
    """``demo_start_spread``: each demonstration's tool starts over its own point of the work
    area, on the same layouts as without it; the demonstrations still succeed, and the episodes
    after them start where the task puts the tool."""

    def demos(spread: float):
        cfg = pick_place_config(tmp_path / str(spread), demos=3, demo_start_spread=spread)
        learner = Learner(cfg)
        env, starts, layouts = learner.env, [], []
        reset = env.reset

        def watched_reset(*args, **kw):
            obs = reset(*args, **kw)
            starts.append(env.controller.tool_pose(env.data)[0].copy())
            layouts.append(env.goal_info()["cube"].copy())
            return obs

        env.reset = watched_reset
        try:
            learner.collect_demos()
            demo = learner.replay.partitions["demo"]
            successes = demo.reward[: demo.size].sum()
            env.reset(seed=5, split="heldout")  # not a demonstration: the task's start
            return np.array(starts), np.array(layouts), successes, env
        finally:
            learner.close()

    home, home_layouts, home_wins, _ = demos(0.0)
    spread, spread_layouts, spread_wins, env = demos(1.0)
    np.testing.assert_allclose(spread_layouts, home_layouts)  # the same layouts
    assert home_wins == spread_wins == 3
    moved = np.linalg.norm(spread[:3, :2] - home[:3, :2], axis=1)
    assert np.all(moved > 0.005) and np.ptp(spread[:3, :2], axis=0).max() > 0.02
    center = np.array(env.arm.work_center_xy)
    half = np.array(env.arm.work_half_extent_xy)
    assert np.all(np.abs(spread[:3, :2] - center) <= half + 0.01)
    np.testing.assert_allclose(spread[3], home[3], atol=1e-9)  # after the demonstrations
    with pytest.raises(ValueError, match="learn.demo_start_spread"):
        reach_config(tmp_path, demo_start_spread=1.5)


def test_the_layout_curriculum_places_the_online_episodes_and_learns_how_they_went(tmp_path):
    """``layout_focus=1``: every online episode's object lies in the cell the curriculum picked,
    a training cell, and the curriculum hears back that cell and whether the policy solved it
    alone; evaluation episodes draw no cell from it."""
    cfg = reach_config(
        tmp_path, demos=2, bc_pretrain_steps=0, online_episodes=5, eval_episodes=2, layout_focus=1.0
    )
    learner = Learner(cfg)
    placed, heard = [], []
    pick, record = learner.curriculum.pick, learner.curriculum.record

    def watched_pick():
        placed.append(pick())
        return placed[-1]

    def watched_record(cell, solved):
        heard.append((cell, solved))
        record(cell, solved)

    learner.curriculum.pick, learner.curriculum.record = watched_pick, watched_record
    try:
        result = learner.run()
    finally:
        learner.close()
    assert len(placed) == 5 and all(c is not None and c not in HELDOUT_CELLS for c in placed)
    assert [cell for cell, _ in heard] == placed
    expected: dict[str, list[int]] = {}  # the curve counts them by cell too
    for (i, j), solved in heard:
        won, n = expected.get(f"{i},{j}", [0, 0])
        expected[f"{i},{j}"] = [won + int(solved), n + 1]
    assert result.curve[-1].online_by_cell == expected
    assert result.curve[0].online_by_cell == {}
    with pytest.raises(ValueError, match="learn.layout_focus"):
        reach_config(tmp_path, layout_focus=1.5)
    with pytest.raises(ValueError, match="learn.layout_focus"):
        hil = SimConfig(env=HIL_PICK_CUBE, arm="panda", task="pick_cube")
        reach_config(tmp_path, robot=RobotConfig(sim=hil), layout_focus=0.5)


def test_online_goal_moved_copies_cover_the_approach_before_the_lift(tmp_path):
    """``online_goal_moves``: an online episode the BC term learns from is recorded with the
    simulator's states; its copies show the bowl elsewhere in every frame before the cube is
    lifted and keep only those steps, a success's in the demonstrations, a watcher's steps in
    the interventions; a failure nobody corrected gets none."""
    import mujoco

    from limbic.sim.counterfactual import ApproachRecorder
    from limbic.sim.envs import make_expert
    from limbic.sim.expert import ExpertConfig

    cfg = pick_place_config(tmp_path, demos=1, imitate_successes=True, online_goal_moves=2)
    learner = Learner(cfg)
    try:
        learner.collect_demos()
        demo = learner.replay.partitions["demo"]
        interv = learner.replay.partitions["intervention"]
        expert = make_expert(learner.env, ExpertConfig(), seed=7)

        def recorded(act, seed):
            recorder = ApproachRecorder(learner.env, until="lift")
            ep = run_episode(
                learner.env,
                recorder.wrap(act),
                learner.featurize,
                learner.lang,
                seed=seed,
                split="train",
                on_reset=expert.reset,
            )
            return ep, recorder

        ep, recorder = recorded(lambda _o, _t, _l: expert.act(), 9000)
        assert ep.success
        cube_z = []
        for state in recorder.states:  # the recorded states, replayed: where the cube was
            mujoco.mj_setState(
                learner.env.model, learner.env.data, state, mujoco.mjtState.mjSTATE_INTEGRATION
            )
            mujoco.mj_forward(learner.env.model, learner.env.data)
            cube_z.append(learner.env.goal_info()["cube"][2])
        lift = recorder.lift_frame
        grasp = int(np.argmax(ep.action[:, -1] > 0))
        assert grasp < lift < len(ep)  # the approach runs past the close, up to the lift
        assert max(cube_z[:lift]) < cube_z[0] + 0.01 <= cube_z[lift]
        before = demo.size
        learner._store("online", ep)
        learner._store_goal_moved(ep, recorder)
        assert demo.size == before + len(ep) + 2 * lift  # the copy, then two approaches
        assert learner.goal_moved == 2 and interv.size == 0
        copied = np.arange(before + len(ep), demo.size)
        np.testing.assert_array_equal(demo.action[copied[:lift]], ep.action[:lift])
        original = demo.tokens[demo.obs[np.arange(before, before + lift)]]
        moved = demo.tokens[demo.obs[copied[:lift]]]
        assert all(not np.array_equal(a, b) for a, b in zip(original, moved, strict=True))

        # a failure the policy ran alone: no copy
        hold = np.zeros(learner.env.action_spec.low.shape, np.float32)
        ep, recorder = recorded(lambda _o, _t, _l: hold, 9001)
        assert not ep.success and recorder.lift_frame is None
        before = demo.size
        learner._store_goal_moved(ep, recorder)
        assert demo.size == before and learner.goal_moved == 2
        # the same failure with a watcher's steps in it: their copies go to the interventions
        ep.intervention = np.arange(len(ep)) % 3 == 0
        learner._store_goal_moved(ep, recorder)
        assert interv.size == 2 * int(ep.intervention.sum()) and demo.size == before
    finally:
        learner.close()
    with pytest.raises(Exception, match="online_goal_moves"):
        reach_config(tmp_path, online_goal_moves=1)
    with pytest.raises(ValueError, match="until"):
        ApproachRecorder(None, until="drop")
