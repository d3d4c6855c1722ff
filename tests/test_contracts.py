"""The shared data contracts reject bad values with a message that names the field."""

import numpy as np
import pytest

from limbic.contracts import (
    ActionKind,
    ActionSpec,
    ContractError,
    Episode,
    Observation,
    Transition,
)


def make_obs(step: int = 0, episode_id: str = "ep", **overrides) -> Observation:
    fields = dict(
        timestamp_ns=1_000,
        images={"front": np.zeros((8, 8, 3), np.uint8), "wrist": np.zeros((8, 8, 3), np.uint8)},
        state=np.zeros(6, np.float32),
        instruction="pick up the red cube",
        episode_id=episode_id,
        step=step,
    )
    fields.update(overrides)
    return Observation(**fields)


SPEC = ActionSpec(
    ActionKind.EE_DELTA,
    ("dx", "dy", "dz", "gripper"),
    [-0.02, -0.02, -0.02, 0],
    [0.02, 0.02, 0.02, 1],
)


def test_valid_observation_passes():
    obs = make_obs().validate(views=("front", "wrist"), state_dim=6, image_hw=(8, 8))
    assert obs.state.dtype == np.float32


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"images": {"front": np.zeros((8, 8, 3), np.float32)}}, "images['front']"),
        ({"images": {"front": np.zeros((8, 8), np.uint8)}}, "images['front']"),
        ({"state": np.array([0.0, np.nan, 0, 0, 0, 0], np.float32)}, "state[1]"),
        ({"state": np.zeros(5, np.float32)}, "state"),
        ({"instruction": ""}, "instruction"),
        ({"step": -1}, "step"),
        ({"timestamp_ns": -5}, "timestamp_ns"),
    ],
)
def test_bad_observation_names_the_field(overrides, field):
    with pytest.raises(ContractError) as e:
        make_obs(**overrides).validate(state_dim=6)
    assert e.value.field == field
    assert field in str(e.value)


def test_missing_view_is_named():
    obs = make_obs(images={"front": np.zeros((8, 8, 3), np.uint8)})
    with pytest.raises(ContractError, match=r"missing view\(s\) \['wrist'\]"):
        obs.validate(views=("front", "wrist"))


def test_action_bounds_are_enforced_not_wrapped():
    assert SPEC.validate(np.array([0.01, 0, -0.02, 1.0])).dtype == np.float32
    with pytest.raises(ContractError) as e:
        SPEC.validate(np.array([0.0, 0.05, 0.0, 0.5]))
    assert e.value.field == "action[dy]" and "outside the declared bounds" in str(e.value)
    with pytest.raises(ContractError, match=r"action\[gripper\]"):
        SPEC.validate(np.array([0.0, 0.0, 0.0, 1.5]))
    with pytest.raises(ContractError, match="must be finite"):
        SPEC.validate(np.array([np.inf, 0.0, 0.0, 0.5]))
    with pytest.raises(ContractError, match=r"expected shape \(4,\)"):
        SPEC.validate(np.zeros(3))


def test_action_spec_round_trips_through_plain_data():
    again = ActionSpec.from_dict(SPEC.to_dict())
    assert again.names == SPEC.names and again.kind is ActionKind.EE_DELTA
    np.testing.assert_array_equal(again.low, SPEC.low)


def test_episode_validation_checks_order_and_ids():
    steps = [Transition(make_obs(i), np.zeros(4, np.float32)) for i in range(3)]
    steps[-1].terminated = True
    ep = Episode("ep", "pick up the red cube", steps)
    assert ep.validate(SPEC) is ep
    steps[1].observation.step = 5
    with pytest.raises(ContractError, match=r"transitions\[1\].observation.step"):
        ep.validate()
    steps[1].observation.step = 1
    steps[2].action = np.array([0, 0, 0, 2.0], np.float32)
    with pytest.raises(ContractError, match=r"transitions\[2\].action\[gripper\]"):
        ep.validate(SPEC)
