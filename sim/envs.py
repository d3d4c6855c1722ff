"""The simulator a :class:`~limbic.sim.env.SimConfig` names, with its scripted expert.

``sim.env`` picks the simulator: ``limbic`` (our own scenes, :class:`SimEnv` and
:class:`ScriptedExpert`) or ``gym_hil/PandaPickCube`` (gym-hil's env through
:class:`HilPickCubeEnv` and :class:`HilPickCubeExpert`). Everything that runs episodes (the
in-process learning loop, ``SimRobot`` under the actor, the scripted operator) builds them
here, so a new simulator is one row of this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from limbic.contracts import ActionSpec
from limbic.sim.env import HIL_PICK_CUBE, SIM_ENVS, SimConfig
from limbic.sim.expert import ExpertConfig


@dataclass(frozen=True)
class Simulator:
    """How to build one simulator, its expert and (without building it) its action space."""

    env: Callable[[SimConfig], Any]
    expert: Callable[[Any, ExpertConfig, int | None], Any]
    action_spec: Callable[[SimConfig], ActionSpec]


def _limbic_env(cfg: SimConfig) -> Any:
    from limbic.sim.env import SimEnv

    return SimEnv(cfg)


def _limbic_expert(env: Any, cfg: ExpertConfig, seed: int | None) -> Any:
    from limbic.sim.expert import ScriptedExpert

    return ScriptedExpert(env, cfg, seed=seed)


def _limbic_action_spec(cfg: SimConfig) -> ActionSpec:
    from limbic.sim.arms import get_arm
    from limbic.sim.control import make_action_spec

    return make_action_spec(get_arm(cfg.arm), cfg.action)


def _hil_env(cfg: SimConfig) -> Any:
    from limbic.sim.hil_adapter import HilPickCubeEnv

    return HilPickCubeEnv(cfg)


def _hil_expert(env: Any, cfg: ExpertConfig, seed: int | None) -> Any:
    from limbic.sim.hil_expert import HilPickCubeExpert

    return HilPickCubeExpert(env, cfg, seed=seed)


def _hil_action_spec(cfg: SimConfig) -> ActionSpec:
    from limbic.sim.hil_adapter import hil_action_spec

    return hil_action_spec()


SIMULATORS: dict[str, Simulator] = {
    "limbic": Simulator(_limbic_env, _limbic_expert, _limbic_action_spec),
    HIL_PICK_CUBE: Simulator(_hil_env, _hil_expert, _hil_action_spec),
}
assert set(SIMULATORS) == set(SIM_ENVS), "every SimConfig.env needs a row here"


def make_sim_env(cfg: SimConfig) -> Any:
    """The env of ``cfg.env`` (a :class:`SimEnv` or an adapter with the same interface)."""
    return SIMULATORS[cfg.env].env(cfg)


def make_expert(env: Any, cfg: ExpertConfig | None = None, seed: int | None = None) -> Any:
    """The scripted expert for ``env`` (built by :func:`make_sim_env`)."""
    return SIMULATORS[env.cfg.env].expert(env, cfg or ExpertConfig(), seed)


def sim_action_spec(cfg: SimConfig) -> ActionSpec:
    """The action space of ``cfg``'s env, without building the env."""
    return SIMULATORS[cfg.env].action_spec(cfg)
