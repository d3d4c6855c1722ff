"""``limbic-bench cues``: its two measures tell a cube follower from a bowl follower."""

import subprocess
import sys

import numpy as np
import pytest

from limbic.bench.cues import expert_chunk, measure
from limbic.sim.env import SimConfig, SimEnv
from limbic.sim.envs import make_expert
from limbic.sim.scene import CameraConfig

SEEDS = list(range(4_000_000, 4_000_040))


@pytest.fixture(scope="module")
def env():
    env = SimEnv(SimConfig(task="pick_place", camera=CameraConfig(height=32, width=32)))
    yield env
    env.close()


def _towards(target: str, sign: float):
    """A chunk source that moves the tool by ``sign`` x (``target`` - tool), read from the sim."""

    def chunk(env: SimEnv, _obs) -> np.ndarray:
        tool = env.controller.tool_pose(env.data)[0][:2]
        where = env.goal_info()[target][:2]
        return np.array([[*(sign * (where - tool)), 0.0, 0.0]])

    return chunk


def test_a_cube_follower_scores_one_on_the_cube_and_zero_on_the_bowl(env):
    f = measure(env, _towards("cube", 1.0), SEEDS)
    assert f.cube_dx == pytest.approx(1.0, abs=1e-6) and f.cube_dy == pytest.approx(1.0, abs=1e-6)
    assert abs(f.bowl_dx) < 1e-6 and abs(f.bowl_dy) < 1e-6
    assert f.shifted >= 5 and abs(f.bowl_shift_dy) < 1e-6  # moving the bowl changes nothing


def test_a_bowl_follower_is_caught_by_both_measures(env):
    f = measure(env, _towards("bowl", -1.0), SEEDS)  # away from the bowl, as the shortcut does
    assert f.bowl_dy == pytest.approx(-1.0, abs=1e-6) and abs(f.cube_dy) < 1e-6
    assert f.bowl_shift_dy == pytest.approx(-1.0, abs=1e-6)


def test_the_scripted_expert_follows_the_cube(env):
    f = measure(env, expert_chunk(make_expert(env, seed=0), 4), SEEDS)
    assert f.cube_dx > 0.8 and f.cube_dy > 0.8
    assert abs(f.bowl_dy) < 0.1 and abs(f.bowl_shift_dy) < 0.1


def test_a_task_without_a_bowl_is_refused():
    env = SimEnv(SimConfig(task="reach", camera=CameraConfig(height=32, width=32)))
    try:
        with pytest.raises(ValueError, match="pick_place"):
            measure(env, _towards("target", 1.0), SEEDS)
    finally:
        env.close()


def test_the_command_prints_its_summary_for_a_saved_policy(tmp_path):
    from limbic.policy.vla import PolicyConfig, VLAPolicy

    env = SimEnv(SimConfig(task="pick_place"))
    try:
        policy = VLAPolicy(PolicyConfig(chunk_len=4), env.action_spec, len(env.state_names))
    finally:
        env.close()
    policy.save(tmp_path / "policy.pt")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "limbic.launch.bench",
            "cues",
            "--policy",
            str(tmp_path / "policy.pt"),
            "--layouts",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    keys = [kv.split("=")[0] for kv in last.split()]
    assert keys == ["cube_dx", "cube_dy", "bowl_dy", "bowl_shift_dy", "layouts", "shifted"]
    assert "expert" in res.stdout and "layouts=8" in last
