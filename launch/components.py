"""Build robots and operators from their typed configs (the wiring behind every entry point).

Each kind is one entry in a table, so adding a physical arm or a teleop device is one line
here and one YAML file under ``launch/conf``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from limbic.launch.config import require
from limbic.robot.base import Robot
from limbic.sim.env import SimConfig
from limbic.sim.expert import ExpertConfig
from limbic.teleop.base import Teleoperator


@dataclass
class RobotConfig:
    """Which arm to drive: ``sim`` (MuJoCo) now; physical arms join this table."""

    type: str = "sim"
    """Robot kind, a key of ``ROBOTS``."""
    sim: SimConfig = field(default_factory=SimConfig)
    """Simulation settings (arm model, task, cameras, action space) when ``type`` is ``sim``."""

    def __post_init__(self) -> None:
        require(self.type in ROBOTS, "robot.type", f"{self.type!r} is not one of {sorted(ROBOTS)}")


@dataclass
class OperatorConfig:
    """Who plays the human: ``scripted`` (the simulated expert) now; devices join this table."""

    type: str = "scripted"
    """Operator kind, a key of ``OPERATORS``."""
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    """The scripted expert's suboptimality knobs."""
    seed: int = 0
    """Seed of the operator's own randomness (noise, episode modes)."""

    def __post_init__(self) -> None:
        require(
            self.type in OPERATORS,
            "operator.type",
            f"{self.type!r} is not one of {sorted(OPERATORS)}",
        )


def _sim_robot(cfg: RobotConfig) -> Robot:
    from limbic.sim.robot import SimRobot

    return SimRobot(cfg.sim)


def _scripted_operator(cfg: OperatorConfig, robot: Robot) -> Teleoperator:
    from limbic.sim.operator import ScriptedOperator
    from limbic.sim.robot import SimRobot

    if not isinstance(robot, SimRobot):
        raise ValueError("operator.type=scripted needs a simulated robot (robot.type=sim)")
    return ScriptedOperator(robot, cfg.expert, seed=cfg.seed)


ROBOTS: dict[str, Callable[[RobotConfig], Robot]] = {"sim": _sim_robot}
OPERATORS: dict[str, Callable[[OperatorConfig, Robot], Teleoperator]] = {
    "scripted": _scripted_operator
}


def make_robot(cfg: RobotConfig) -> Robot:
    """The robot of ``cfg`` (not yet connected)."""
    return ROBOTS[cfg.type](cfg)


def make_operator(cfg: OperatorConfig, robot: Robot) -> Teleoperator:
    """The operator of ``cfg`` for ``robot`` (connect the robot first)."""
    return OPERATORS[cfg.type](cfg, robot)
