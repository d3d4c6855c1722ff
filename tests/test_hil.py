"""gym-hil's PandaPickCube through the adapter: contract, action mapping, expert, configs, learning."""

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module

import limbic.launch.train  # noqa: F401  (registers train_schema with Hydra)
from limbic.contracts import ContractError
from limbic.launch.components import RobotConfig, make_robot
from limbic.launch.config import ConfigError, to_object
from limbic.policy.rlpd import AgentConfig
from limbic.policy.vla import PolicyConfig
from limbic.runtime.learn import LearnConfig, learn
from limbic.runtime.supervisor import TrainConfig
from limbic.sim.env import HIL_PICK_CUBE, SimConfig
from limbic.sim.envs import make_expert, make_sim_env, sim_action_spec
from limbic.sim.expert import ExpertConfig
from limbic.sim.hil_adapter import CUBE_AREA_XY, PHRASINGS
from limbic.sim.scene import CameraConfig
from limbic.sim.tasks import HELDOUT_COLORS, TRAIN_COLORS, in_heldout_cell


def hil_config(**kw) -> SimConfig:
    return SimConfig(env=HIL_PICK_CUBE, arm="panda", task="pick_cube", **kw)


@pytest.fixture(scope="module")
def env():
    e = make_sim_env(hil_config(camera=CameraConfig(height=64, width=48)))
    yield e
    e.close()


def cube_uv(env) -> tuple[float, float]:
    (x0, y0), (x1, y1) = CUBE_AREA_XY
    x, y = env.goal_info()["cube"][:2]
    return (x - x0) / (x1 - x0), (y - y0) / (y1 - y0)


def test_observation_contract_and_determinism_per_seed(env):
    obs = env.reset(seed=7, split="train")
    obs.validate(views=("front", "wrist"), state_dim=8, image_hw=(64, 48))
    assert env.state_names == (*(f"joint{i}" for i in range(1, 8)), "gripper")
    assert env.step_limit == 100  # gym-hil's registered limit
    first = {v: im.copy() for v, im in obs.images.items()}, obs.state.copy(), obs.instruction
    actions = [np.array([0.02, -0.01, -0.02, 0.0]), np.array([0.0, 0.025, 0.0, 1.0])]
    states = [env.step(a).observation.state for a in actions]

    again = env.reset(seed=7, split="train")
    for v in first[0]:
        np.testing.assert_array_equal(again.images[v], first[0][v])
    np.testing.assert_array_equal(again.state, first[1])
    assert again.instruction == first[2]
    for a, s in zip(actions, states, strict=True):
        np.testing.assert_array_equal(env.step(a).observation.state, s)

    other = env.reset(seed=8, split="train")
    assert not np.array_equal(other.images["front"], first[0]["front"])


def test_heldout_split_uses_unseen_phrasings_colours_and_cells(env):
    for seed in range(6):
        env.reset(seed=seed, split="train")
        assert env.color in TRAIN_COLORS and not in_heldout_cell(*cube_uv(env))
        assert env.instruction in {p.format(c=env.color) for p in PHRASINGS.train}
        env.reset(seed=seed, split="heldout")
        assert env.color in HELDOUT_COLORS and in_heldout_cell(*cube_uv(env))
        assert env.instruction in {p.format(c=env.color) for p in PHRASINGS.heldout}


def test_action_maps_onto_gym_hils_action_space(env):
    env.reset(seed=3)
    # gripper open (command 0): closure c becomes the grasp increment c - 0
    np.testing.assert_allclose(
        env.hil_action(np.array([0.01, -0.02, 0.025, 1.0])),
        [0.01, -0.02, 0.025, 0.0, 0.0, 0.0, 1.0],
    )
    env.data.ctrl[env.model.actuator("fingers_actuator").id] = 0.5 * 255
    np.testing.assert_allclose(
        env.hil_action(np.array([0.0, 0.0, 0.0, 0.2])), [0, 0, 0, 0, 0, 0, -0.3], atol=1e-12
    )
    env.reset(seed=3)
    target = env.data.mocap_pos[0].copy()
    res = env.step(np.array([0.01, -0.02, 0.025, 0.6], np.float32))
    # gym-hil moves its controller target by exactly (dx, dy, dz) and sets the gripper command
    np.testing.assert_allclose(env.data.mocap_pos[0], target + [0.01, -0.02, 0.025], atol=1e-6)
    assert env.data.ctrl[env.model.actuator("fingers_actuator").id] == pytest.approx(0.6 * 255)
    np.testing.assert_allclose(res.action, [0.01, -0.02, 0.025, 0.6], atol=1e-7)
    with pytest.raises(ContractError, match="dx"):
        env.step(np.array([0.03, 0.0, 0.0, 0.0]))
    with pytest.raises(ContractError, match="gripper"):
        env.step(np.array([0.0, 0.0, 0.0, 1.5]))
    assert sim_action_spec(env.cfg).names == env.action_spec.names


def play(env, expert, seed, split="train"):
    env.reset(seed=seed, split=split)
    expert.reset()
    for _ in range(env.step_limit):
        res = env.step(expert.act())
        if res.terminated or res.truncated:
            return res
    raise AssertionError("the episode neither ended nor was truncated")


def test_expert_lifts_the_cube_and_its_failed_mode_does_not(env):
    expert = make_expert(env, seed=0)
    for seed, split in ((1, "train"), (2, "train"), (3, "heldout")):
        res = play(env, expert, seed, split)
        assert res.success and res.terminated and env.success()
        assert env.goal_info()["cube"][2] > 0.1  # gym-hil's own criterion: lifted 10 cm
        assert env.t < 40
    failing = make_expert(env, ExpertConfig(p_fail=1.0), seed=0)
    res = play(env, failing, 1)
    assert not res.success and res.truncated and env.t == env.step_limit


def compose_train(*overrides: str) -> TrainConfig:
    with initialize_config_module("limbic.launch.conf", version_base=None):
        return to_object(compose("train", overrides=list(overrides)), TrainConfig)


def test_robot_config_selects_it_and_bad_values_name_the_field():
    cfg = compose_train("robot=hil_pick_cube", "runtime=inprocess", "algorithm=bc")
    assert (cfg.robot.sim.env, cfg.robot.sim.arm, cfg.robot.sim.task) == (
        HIL_PICK_CUBE,
        "panda",
        "pick_cube",
    )
    assert cfg.mode == "bc" and cfg.learn_config().robot.sim.env == HIL_PICK_CUBE
    assert compose_train("robot=sim_panda").robot.sim.env == "limbic"
    for overrides, key in (
        (("robot=hil_pick_cube", "task=push"), "robot.sim.task"),
        (("robot=hil_pick_cube", "robot.sim.arm=so101"), "robot.sim.arm"),
        (("robot=hil_pick_cube", "robot.sim.action.yaw=true"), "robot.sim.action"),
        (("robot.sim.env=gym_hil/Nope",), "robot.sim.env"),
        (("task=pick_cube",), "robot.sim.task"),
    ):
        with pytest.raises(ConfigError) as e:
            compose_train(*overrides)
        assert e.value.key == key, (overrides, str(e.value))


def test_sim_robot_and_scripted_operator_drive_it():
    from limbic.launch.components import OperatorConfig, make_operator

    cfg = RobotConfig(sim=hil_config(camera=CameraConfig(height=32, width=32)))
    robot = make_robot(cfg)
    spec_before = robot.action_spec
    with robot:
        operator = make_operator(OperatorConfig(), robot)
        obs = robot.start_episode(seed=5)
        assert robot.observation_features["state"] == obs.state.shape
        np.testing.assert_array_equal(robot.action_spec.high, spec_before.high)
        operator.on_episode_start()
        for _ in range(robot.step_limit):
            robot.send_action(operator.get_action(robot.get_observation()))
            if robot.last_step.terminated or robot.last_step.truncated:
                break
        assert robot.success()


@pytest.mark.slow
def test_bc_learning_run_completes_on_it(tmp_path):
    cfg = LearnConfig(
        robot=RobotConfig(sim=hil_config(step_limit=30)),
        policy=PolicyConfig(
            agent=AgentConfig(
                d_model=32, n_queries=2, feature_dim=64, hidden=64, n_q=2, critic_warmup=0
            )
        ),
        mode="bc",
        demos=2,
        batch_size=16,
        bc_pretrain_steps=20,
        eval_episodes=2,
        out_dir=str(tmp_path / "run"),
        videos=1,
        progress=False,
        threads=1,
    )
    result = learn(cfg)
    assert [e.episodes for e in result.curve] == [0]
    assert 0.0 <= result.final_success <= 1.0 and result.curve[0].mean_length > 0
    assert result.updates == 0  # BC only: no actor-critic updates
    assert (tmp_path / "run" / "policy.pt").is_file()
    assert (tmp_path / "run" / "eval_00.mp4").stat().st_size > 0


def test_learning_benchmark_takes_the_env_and_names_bad_combinations(capsys):
    from limbic.bench.learn import main

    with pytest.raises(SystemExit) as e:
        main(["--env", HIL_PICK_CUBE, "--arm", "so101", "--arms", "bc"])
    assert e.value.code == 2
    assert "sim.arm" in capsys.readouterr().err


def test_the_benchmark_s_watched_arm_is_the_launch_preset_on_its_budget(capsys):
    from limbic.bench.learn import WATCHED_PRESET, main, preset_config, summary_line
    from limbic.runtime.learn import EvalResult, LearnConfig, LearnResult

    base = LearnConfig(
        demos=12, online_episodes=60, eval_every=20, eval_episodes=8, seed=3, out_dir="x/watched"
    )
    cfg = preset_config(WATCHED_PRESET, base)
    preset = compose_train("runtime=inprocess", f"algorithm={WATCHED_PRESET}").learn_config()
    # the preset's method...
    assert cfg.policy == preset.policy and cfg.takeover == preset.takeover
    assert cfg.policy.agent.waypoint_source == "pretrained" and cfg.policy.chunk_len == 4
    assert cfg.interventions and cfg.imitate_successes and cfg.localiser == preset.localiser
    # ...on the bench's budget, seed and evaluation
    assert (cfg.demos, cfg.online_episodes, cfg.eval_every, cfg.eval_episodes, cfg.seed) == (
        12,
        60,
        20,
        8,
        3,
    )
    assert cfg.out_dir == "x/watched" and cfg.videos == base.videos
    # only where the preset works
    with pytest.raises(SystemExit) as e:
        main(["--task", "reach", "--arms", "bc", "watched"])
    assert e.value.code == 2 and "watched arm" in capsys.readouterr().err

    def result(rates: list[float], human: float) -> LearnResult:
        curve = [
            EvalResult(50 * i, r, 40.0, 0.0, 1.0, human_share=human) for i, r in enumerate(rates)
        ]
        return LearnResult(curve, rates[-1], Path("."), 10, 12.5)

    line = summary_line(
        {
            "bc": result([0.6], 0),
            "sparse": result([0.6, 0.5], 0),
            "watched": result([0.6, 0.9, 0.85], 0.08),
        },
        100,
    )
    assert line == (
        "episodes_to_90=none success_at_100=0.50 sparse_success_at_100=0.50 bc_success=0.60 "
        "minutes=12.5 watched_episodes_to_90=50 watched_success_at_100=0.85 "
        "watched_human_share=0.08 watched_minutes=12.5"
    )


@pytest.mark.slow
def test_learning_benchmark_runs_its_arms_and_prints_the_summary(tmp_path, capsys):
    """A tiny run of every arm: the curves, the human share of the hil arm, the last line."""
    import re

    import torch

    from limbic.bench.learn import main
    from limbic.critic.model import CriticModelConfig, ProgressCritic

    critic = ProgressCritic(
        CriticModelConfig(backbone="small_cnn", image_hw=(128, 128), d_model=32, pool_heads=2)
    )
    path = tmp_path / "critic.pt"
    torch.save({"critic": critic.export_state()}, path)
    args = ["--task", "reach", "--demos", "1", "--episodes", "2", "--eval-every", "2"]
    args += ["--eval-episodes", "1", "--bc-steps", "2", "--batch-size", "16"]
    args += ["--imitate-successes", "--value-weight", "0.5"]
    args += ["--critic", str(path), "--out", str(tmp_path / "bench"), "--arms"]
    assert main([*args, "bc", "sparse", "shaped", "hil"]) == 0
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(
        r"episodes_to_90=(\d+|none) success_at_2=\d\.\d\d sparse_success_at_2=\d\.\d\d "
        r"bc_success=\d\.\d\d minutes=\d+\.\d hil_episodes_to_90=(\d+|none) "
        r"hil_success_at_2=\d\.\d\d hil_human_share=\d\.\d\d hil_minutes=\d+\.\d",
        last,
    ), last
    assert (tmp_path / "bench" / "curves.png").is_file()
    assert "human_share" in out and "imitated" in out
    assert "RL arms: value weight 0.5, self-imitation on" in out


def test_the_filtered_bc_preset_is_rlpd_with_an_imitating_actor_and_self_imitation():
    base = compose_train("runtime=inprocess").learn_config()
    cfg = compose_train("runtime=inprocess", "algorithm=filtered_bc").learn_config()
    assert (base.imitate_successes, base.policy.agent.value_weight) == (False, 1.0)
    assert cfg.imitate_successes and cfg.policy.agent.value_weight == 0.0
    assert cfg.policy.chunk_len == 4 and cfg.mode == "rl"
    assert (cfg.demos, cfg.online_episodes, cfg.utd) == (base.demos, base.online_episodes, base.utd)
    tuned = compose_train("algorithm=filtered_bc", "policy.agent.value_weight=0.1")
    assert tuned.learn_config().policy.agent.value_weight == 0.1


def test_the_watched_preset_adds_the_mistakes_watcher_to_filtered_cloning():
    plain = compose_train("runtime=inprocess", "algorithm=filtered_bc").learn_config()
    cfg = compose_train("runtime=inprocess", "algorithm=filtered_bc_watched").learn_config()
    assert cfg.interventions and not plain.interventions
    assert (cfg.takeover.rule, cfg.takeover.patience) == ("mistakes", 5)
    assert cfg.imitate_successes and cfg.policy.agent.value_weight == 0.0
    assert cfg.policy.chunk_len == plain.policy.chunk_len
    assert (cfg.policy.agent.actor_ema, plain.policy.agent.actor_ema) == (0.999, 0.995)
    agent = cfg.policy.agent
    assert (agent.waypoint_source, agent.waypoint_input) == ("pretrained", True)
    assert (agent.localiser_target, agent.localiser_skip) == ("grasp", True)
    assert plain.policy.agent.waypoint_source == "feature"
    job = compose_train("algorithm=filtered_bc_watched")  # the async job hands it to the actors
    assert job.runtime == "async" and job.interventions and job.takeover == cfg.takeover
