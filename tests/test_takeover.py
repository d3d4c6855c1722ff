"""The simulated human that takes over from a learning policy (HG-DAgger-style gating)."""

import numpy as np
import pytest

from limbic.contracts import ActionKind, ActionSpec
from limbic.launch.config import ConfigError
from limbic.sim.operator import ScriptedTakeover
from limbic.teleop.arbiter import TakeoverConfig

SPEC = ActionSpec(
    ActionKind.EE_DELTA,
    ("dx", "dy", "gripper"),
    np.array([-0.02, -0.02, 0.0], np.float32),
    np.array([0.02, 0.02, 1.0], np.float32),
)


class FixedExpert:
    """An operator that always wants the same action; counts its calls."""

    def __init__(self, action):
        self.action = np.asarray(action, np.float32)
        self.calls = self.resets = 0

    def reset(self):
        self.resets += 1

    def act(self):
        self.calls += 1
        return self.action


def test_gap_is_the_largest_normalised_component_difference():
    arb = ScriptedTakeover(FixedExpert([0, 0, 0]), SPEC)
    # dx differs by 0.01 of a 0.02 half-range (0.5); the gripper by 0.25 of a 0.5 half-range (0.5)
    assert arb.gap(np.array([0.01, 0.0, 0.25]), np.zeros(3)) == pytest.approx(0.5)
    assert arb.gap(np.array([0.0, -0.02, 1.0]), np.zeros(3)) == pytest.approx(2.0)


def test_takes_over_after_patience_holds_then_hands_back():
    expert = FixedExpert([0.02, 0.0, 0.0])
    arb = ScriptedTakeover(expert, SPEC, TakeoverConfig(threshold=0.6, patience=3, hold=4))
    arb.on_episode_start(None)
    wrong = np.array([-0.02, 0.0, 0.0], np.float32)  # the opposite direction: gap 2
    chosen = [arb.choose(None, wrong) for _ in range(10)]
    flags = [h for _, h in chosen]
    # two ticks of patience, then the human's hold of 4 ticks, then the policy gets two more
    assert flags == [False, False, True, True, True, True, False, False, True, True]
    for action, human in chosen:
        np.testing.assert_array_equal(action, expert.action if human else wrong)
    assert arb.takeovers == 2 and expert.calls == 10  # asked every tick, to follow the task


def test_a_policy_close_to_the_operator_keeps_the_arm():
    expert = FixedExpert([0.02, 0.0, 1.0])
    arb = ScriptedTakeover(expert, SPEC, TakeoverConfig(threshold=0.6, patience=2, hold=5))
    arb.on_episode_start(None)
    close = np.array([0.015, 0.005, 0.9], np.float32)  # gap 0.25
    assert not any(arb.choose(None, close)[1] for _ in range(50))
    # isolated wrong ticks (fewer than patience in a row) do not trigger a takeover either
    wrong = np.array([-0.02, 0.0, 0.0], np.float32)
    assert not any(arb.choose(None, wrong if i % 2 else close)[1] for i in range(50))
    assert arb.takeovers == 0


def test_a_new_episode_ends_a_takeover():
    expert = FixedExpert([0.02, 0.0, 0.0])
    arb = ScriptedTakeover(expert, SPEC, TakeoverConfig(patience=1, hold=10))
    arb.on_episode_start(None)
    wrong = np.array([-0.02, 0.0, 0.0], np.float32)
    assert arb.choose(None, wrong)[1]
    arb.on_episode_start(None)
    assert expert.resets == 2
    assert not arb.choose(None, np.array([0.02, 0.0, 0.0], np.float32))[1]


@pytest.mark.parametrize(
    "field, value", [("threshold", 0.0), ("patience", 0), ("hold", 0), ("rule", "style")]
)
def test_bad_takeover_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"takeover.{field}"):
        TakeoverConfig(**{field: value})


def test_the_mistakes_rule_needs_an_expert_that_judges_the_task():
    with pytest.raises(ConfigError, match="takeover.rule"):
        ScriptedTakeover(FixedExpert([0, 0, 0]), SPEC, TakeoverConfig(rule="mistakes"))
    from limbic.sim.env import SimConfig
    from limbic.sim.envs import make_expert, make_sim_env
    from limbic.sim.expert import ExpertConfig

    env = make_sim_env(SimConfig(arm="so101", task="reach"))
    try:
        with pytest.raises(ConfigError, match="takeover.rule.*'gap'"):
            ScriptedTakeover(
                make_expert(env, ExpertConfig()), env.action_spec, TakeoverConfig(rule="mistakes")
            )
    finally:
        env.close()


def _watched_episode(env, arb, policy, seed):
    """One pick-and-place episode of ``policy(t) -> action`` under ``arb``; (success, human steps,
    the reasons of the takeovers)."""
    obs = env.reset(seed=seed, split="train")
    arb.on_episode_start(obs)
    arb.reasons.clear()
    human = 0
    for t in range(env.step_limit):
        action, by_human = arb.choose(obs, policy(t))
        human += by_human
        result = env.step(action)
        obs = result.observation
        if result.terminated or result.truncated:
            return result.success, human, dict(arb.reasons)
    return False, human, dict(arb.reasons)


def test_the_mistakes_rule_leaves_a_good_policy_alone_and_stops_a_bad_one():
    """Under ``mistakes`` the watcher judges outcomes: a policy that solves the task its own way
    (an operator that hovers 2 cm above the cube instead of 5 cm before it descends) keeps the
    arm, where the ``gap`` rule takes it; a policy that shuts the jaws on nothing, or that drifts
    away from the cube, is stopped, and the watcher re-plans from the scene and finishes the
    task."""
    from limbic.sim.env import SimConfig
    from limbic.sim.envs import make_expert, make_sim_env
    from limbic.sim.expert import ExpertConfig

    env = make_sim_env(SimConfig(arm="so101", task="pick_place"))
    try:
        spec = env.action_spec
        mistakes = TakeoverConfig(rule="mistakes", patience=3, hold=200)
        watcher = make_expert(env, ExpertConfig(), seed=0)

        low = make_expert(env, ExpertConfig(), seed=1)
        low.hover = 0.02
        for seed in range(2):
            low.reset()
            arb = ScriptedTakeover(watcher, spec, mistakes)
            ok, human, reasons = _watched_episode(env, arb, lambda t: low.act(), seed)
            assert ok and human == 0 and reasons == {}
            low.reset()
            gap = ScriptedTakeover(watcher, spec, TakeoverConfig(rule="gap", patience=3))
            _, human, reasons = _watched_episode(env, gap, lambda t: low.act(), seed)
            assert human > 0 and set(reasons) == {"gap"}

        grip = spec.names.index("gripper")
        shut = ((spec.low + spec.high) / 2).astype(np.float32)
        shut[grip] = spec.high[grip]  # closes where it starts, high above the cube
        ok, human, reasons = _watched_episode(
            env, ScriptedTakeover(watcher, spec, mistakes), lambda t: shut, seed=0
        )
        assert ok and 0 < human
        assert reasons and set(reasons) <= {"jaws shut on nothing", "gripper closed above the cube"}

        # sideways, away from the cube, with the jaws open
        env.reset(seed=0, split="train")
        y = spec.names.index("dy")
        tool_y = env.data.site_xpos[env.kin.site_id][1]
        away = ((spec.low + spec.high) / 2).astype(np.float32)
        away[grip] = spec.low[grip]
        away[y] = spec.low[y] if env.goal_info()["cube"][1] > tool_y else spec.high[y]
        ok, _, reasons = _watched_episode(
            env, ScriptedTakeover(watcher, spec, mistakes), lambda t: away, seed=0
        )
        assert ok and set(reasons) <= {"moving away from the cube", "stalled away from the cube"}
        assert reasons
    finally:
        env.close()


def test_an_anticipating_watcher_stops_a_grasp_out_of_reach_before_the_jaws_shut():
    """With ``takeover.anticipate`` the watcher stops an arm that starts to close 3 cm off the
    cube (an expert aiming at a shifted grasp point) on that very tick, and finishes the task;
    an arm whose jaws close around the cube (the 2 cm hover) keeps the arm."""
    from limbic.sim.env import SimConfig
    from limbic.sim.envs import make_expert, make_sim_env
    from limbic.sim.expert import ExpertConfig

    env = make_sim_env(SimConfig(arm="so101", task="pick_place"))
    try:
        spec, grip = env.action_spec, env.action_spec.names.index("gripper")
        cfg = TakeoverConfig(rule="mistakes", patience=3, hold=200, anticipate=True)
        watcher = make_expert(env, ExpertConfig(), seed=0)
        off = make_expert(env, ExpertConfig(), seed=1)
        aim = off._grasp_point
        off._grasp_point = lambda cube, yaw: (aim(cube, yaw)[0] + [-0.03, 0.0], aim(cube, yaw)[1])
        low = make_expert(env, ExpertConfig(), seed=1)
        low.hover = 0.02
        for seed in range(2):
            off.reset()
            arb = ScriptedTakeover(watcher, spec, cfg)
            obs = env.reset(seed=seed, split="train")
            arb.on_episode_start(obs)
            closing_at = taken_at = None
            for t in range(env.step_limit):
                proposed = off.act()
                if closing_at is None and proposed[grip] >= 0.5:
                    closing_at = t
                action, by_human = arb.choose(obs, proposed)
                if by_human and taken_at is None:
                    taken_at = t
                    assert env.controller.closure < 0.5  # the jaws have not started to shut
                result = env.step(action)
                obs = result.observation
                if result.terminated or result.truncated:
                    break
            assert result.success and dict(arb.reasons) == {"closing out of reach": 1}
            assert closing_at is not None
            assert taken_at == closing_at  # on the tick it first closed
            low.reset()
            arb = ScriptedTakeover(watcher, spec, cfg)
            ok, human, reasons = _watched_episode(env, arb, lambda t: low.act(), seed)
            assert ok and human == 0 and reasons == {}
    finally:
        env.close()


def test_a_watcher_that_minds_stalls_near_the_cube_stops_a_hovering_arm():
    """An arm that hovers 3 cm above a point 12 mm beside the grasp point, jaws open, makes no
    progress but is never far from the cube: the plain ``mistakes`` watcher leaves it there for
    the whole episode; with ``takeover.stall_near`` it takes the arm after ``STALL_PATIENCE``
    times ``patience`` ticks without progress, and finishes the task."""
    from limbic.sim.env import SimConfig
    from limbic.sim.envs import make_expert, make_sim_env
    from limbic.sim.expert import STALL_PATIENCE, ExpertConfig

    env = make_sim_env(SimConfig(arm="so101", task="pick_place"))
    try:
        spec, grip = env.action_spec, env.action_spec.names.index("gripper")
        watcher = make_expert(env, ExpertConfig(), seed=0)

        def hover(_t):
            cube, yaw, *_ = watcher._pick_place_goal()
            grasp_xy, grasp_z = watcher._grasp_point(cube, yaw)
            target = np.array([grasp_xy[0], grasp_xy[1] + 0.012, grasp_z + 0.03])
            tool = env.controller.tool_pose(env.data)[0]
            action = np.zeros(spec.low.shape, np.float32)
            action[:3] = target - tool
            action[grip] = spec.low[grip]
            return np.clip(action, spec.low, spec.high)

        for stall_near in (False, True):
            cfg = TakeoverConfig(rule="mistakes", patience=3, hold=200, stall_near=stall_near)
            arb = ScriptedTakeover(watcher, spec, cfg)
            obs = env.reset(seed=0, split="train")
            arb.on_episode_start(obs)
            taken_at = None
            for t in range(env.step_limit):
                action, by_human = arb.choose(obs, hover(t))
                if by_human and taken_at is None:
                    taken_at = t
                result = env.step(action)
                obs = result.observation
                if result.terminated or result.truncated:
                    break
            if not stall_near:
                assert taken_at is None and not result.success and dict(arb.reasons) == {}
            else:
                assert dict(arb.reasons) == {"stalled beside the cube": 1} and result.success
                assert STALL_PATIENCE * 3 <= taken_at < 40  # it got there, then idled
        with pytest.raises(ConfigError, match="takeover.stall_near"):
            TakeoverConfig(rule="gap", stall_near=True)
    finally:
        env.close()


def test_anticipating_needs_the_mistakes_rule():
    with pytest.raises(ConfigError, match="takeover.anticipate"):
        TakeoverConfig(rule="gap", anticipate=True)


def test_scripted_operator_rescues_a_policy_that_does_nothing():
    """In the real task, an arm that never moves is taken over and the cube still lands."""
    from limbic.sim.env import SimConfig
    from limbic.sim.envs import make_expert, make_sim_env
    from limbic.sim.expert import ExpertConfig

    env = make_sim_env(SimConfig(arm="so101", task="pick_place"))
    try:
        # each hand-back half-opens the jaws (the idle action's gripper is mid-range) and drops
        # a carried cube: the watcher needs long enough a turn to carry it to the bowl
        arb = ScriptedTakeover(
            make_expert(env, ExpertConfig(), seed=0), env.action_spec, TakeoverConfig(hold=12)
        )
        idle = (env.action_spec.low + env.action_spec.high) / 2
        wins = human = steps = 0
        for seed in range(3):
            obs = env.reset(seed=seed, split="train")
            arb.on_episode_start(obs)
            for _ in range(env.step_limit):
                action, by_human = arb.choose(obs, idle.astype(np.float32))
                result = env.step(action)
                obs, human, steps = result.observation, human + by_human, steps + 1
                if result.terminated or result.truncated:
                    wins += result.success
                    break
        assert wins >= 2
        assert 0.3 < human / steps < 1.0  # the policy keeps getting the arm back
    finally:
        env.close()


def test_expert_taking_over_a_lifted_cube_carries_it_on():
    """The expert resumes mid-task: handed a held, lifted cube, it does not let go of it."""
    from limbic.sim.env import SimConfig
    from limbic.sim.envs import make_expert, make_sim_env
    from limbic.sim.expert import ExpertConfig

    env = make_sim_env(SimConfig(arm="so101", task="pick_place"))
    try:
        first = make_expert(env, ExpertConfig(), seed=0)
        env.reset(seed=0, split="train")
        first.reset()
        for _ in range(env.step_limit):
            env.step(first.act())
            if first.phase == 4:  # carrying towards the bowl
                break
        assert first.phase == 4
        fresh = make_expert(env, ExpertConfig(), seed=1)
        fresh.reset()
        closure = env.action_spec.names.index("gripper")
        action = fresh.act()
        assert fresh.phase >= 3 and action[closure] == pytest.approx(env.action_spec.high[closure])
    finally:
        env.close()


def test_the_actor_offers_the_scripted_arbiter_for_sim_robots_only():
    from runtime_helpers import robot_config

    from limbic.launch.components import make_robot
    from limbic.runtime.actor import ARBITERS, ActorConfig
    from limbic.sim.expert import JAW_MARGIN_M

    robot = make_robot(robot_config(step_limit=5))
    robot.connect()
    try:
        arb = ARBITERS["scripted"](robot, ActorConfig(arbiter="scripted"))
        assert isinstance(arb, ScriptedTakeover)
        assert arb.expert.cfg.jaw_gap_m == JAW_MARGIN_M
        gap = ActorConfig(arbiter="scripted", watcher_jaw_gap_m=0.012)
        assert ARBITERS["scripted"](robot, gap).expert.cfg.jaw_gap_m == 0.012
        obs = robot.start_episode(seed=0, split="train")
        arb.on_episode_start(obs)
        action, _ = arb.choose(obs, np.zeros(robot.action_spec.dim, np.float32))
        np.testing.assert_array_equal(robot.action_spec.clip(action), action)
    finally:
        robot.disconnect()
    with pytest.raises(TypeError, match="needs a simulated robot"):
        ARBITERS["scripted"](object(), ActorConfig())


def test_the_learner_process_points_interventions_at_the_actors(tmp_path):
    from limbic.runtime.learner import AsyncLearner, LearnerConfig

    with pytest.raises(ConfigError, match="actor.arbiter=scripted"):
        AsyncLearner(LearnerConfig(interventions=True, out_dir=str(tmp_path)))
