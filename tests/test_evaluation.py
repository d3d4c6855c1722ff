"""How an evaluation episode ended, and the tallies summed over ranks."""

import mujoco
import numpy as np
import pytest

from limbic.runtime.evaluation import OUTCOMES, EvalTally, ObjectTrace, format_outcomes
from limbic.runtime.rollout import EpisodeRecord
from limbic.sim.env import SimConfig, SimEnv
from limbic.sim.localise import goal_position, object_position
from limbic.sim.scene import CameraConfig


@pytest.fixture(scope="module")
def env():
    with SimEnv(SimConfig(task="pick_place", camera=CameraConfig(height=32, width=32))) as e:
        yield e


def _move_cube(env, pos) -> None:
    adr = env.model.joint("cube_joint").qposadr[0]
    env.data.qpos[adr : adr + 3] = pos
    mujoco.mj_forward(env.model, env.data)


def _ended(env, moves, success=False) -> str:
    """Reset, move the cube through ``moves`` (the trace reads it before each action), and
    ask how the episode ended."""
    env.reset(seed=4, split="train")
    trace = ObjectTrace(env)
    trace.reset()
    act = trace.watch(lambda obs, tokens, lang: None)
    for pos in moves:
        _move_cube(env, pos)
        act(None, None, None)
    return trace.outcome(success)


def test_the_trace_says_how_a_carry_task_ended(env):
    env.reset(seed=4, split="train")
    start, bowl = object_position(env), goal_position(env)
    up = start + [0.0, 0.0, 0.05]
    away = start + [0.0, 0.0, 0.0]  # let go where it was picked: far from the bowl
    assert np.linalg.norm(away[:2] - bowl[:2]) > 0.06
    beside_bowl = np.array([bowl[0] + 0.035, bowl[1], start[2]])
    assert _ended(env, []) == "never_lifted"
    assert _ended(env, [start + [0.005, 0.0, 0.0]]) == "never_lifted"  # a nudge
    assert _ended(env, [start + [0.015, 0.0, 0.0]]) == "pushed_never_lifted"
    assert _ended(env, [start + [0.0, 0.0, 0.01]]) == "never_lifted"  # tipped, not lifted
    assert _ended(env, [up, away]) == "let_go_away"
    assert _ended(env, [up, beside_bowl]) == "let_go_near_goal"
    assert _ended(env, [up]) == "held_at_end"
    assert _ended(env, [up, beside_bowl], success=True) == "success"
    # the last state counts even when no action came after it
    env.reset(seed=4, split="train")
    trace = ObjectTrace(env)
    trace.reset()
    _move_cube(env, up)
    assert trace.outcome(False) == "held_at_end"


def test_only_tasks_that_carry_their_object_are_followed():
    assert ObjectTrace.follows(type("E", (), {"task": type("T", (), {"name": "stack"})()})())
    for name in ("reach", "push"):
        assert not ObjectTrace.follows(type("E", (), {"task": type("T", (), {"name": name})()})())
    assert not ObjectTrace.follows(object())  # another simulator (gym-hil) has no task


def _episode(success: bool) -> EpisodeRecord:
    n = 3
    return EpisodeRecord(
        instruction="x",
        tokens=np.zeros((n + 1, 1, 1, 1), np.float16),
        state=np.zeros((n + 1, 2), np.float32),
        action=np.zeros((n, 2), np.float32),
        reward=np.zeros(n, np.float32),
        terminal=np.zeros(n, bool),
        phi=np.zeros(n + 1, np.float32),
        done_prob=np.zeros(n + 1, np.float32),
        success=success,
        cell=(1, 2),
    )


def test_tallies_sum_over_ranks_with_outcomes_and_the_localiser():
    a, b = EvalTally(), EvalTally()
    a.add(_episode(True), 0.9, np.array([1.0, 2.0, 3.0, 4.0]), "success")
    a.add(_episode(False), 0.9, np.array([1.0, 1.0, 1.0, 2.0]), "let_go_away")
    b.add(_episode(False), 0.9, None, "let_go_away")
    summed = EvalTally.from_list((np.array(a.as_list()) + np.array(b.as_list())).tolist())
    assert summed.episodes == 3 and summed.wins == 1
    assert summed.outcomes() == {
        **dict.fromkeys(OUTCOMES, 0),
        "success": 1,
        "let_go_away": 2,
    }
    np.testing.assert_array_equal(summed.located, [2.0, 3.0, 4.0, 6.0])
    assert summed.by_cell() == {"1,2": [1, 3]}
    # episodes no trace followed leave no outcomes
    c = EvalTally()
    c.add(_episode(True), 0.9)
    assert c.outcomes() == {} and format_outcomes(c.outcomes()) == ""
    assert format_outcomes(summed.outcomes()) == "how the episodes ended: success 1, let go away 2"
    with pytest.raises(ValueError):
        c.add(_episode(False), 0.9, None, "vanished")
