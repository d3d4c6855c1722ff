"""The Robot base class that simulated and physical arms both implement.

``robot=sim_so101`` versus ``robot=so101`` is a config swap because the actor loop only ever
talks to this interface.
"""

from __future__ import annotations

import abc
from typing import Any, Protocol, runtime_checkable

import numpy as np

from limbic.contracts import ActionSpec, Observation


class RobotError(RuntimeError):
    """A robot could not do what was asked (not connected, device fault, timeout)."""


class NotConnectedError(RobotError):
    """An operation needs ``connect()`` first."""


class Robot(abc.ABC):
    """An arm with cameras: ``connect``, observe, act, ``disconnect``.

    Use as a context manager so the arm is always released::

        with make_robot(cfg) as robot:
            obs = robot.get_observation()
            sent = robot.send_action(action)
    """

    name: str = "robot"

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool:
        """True between a successful ``connect`` and ``disconnect``."""

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the device(s); raise :class:`RobotError` with what to check when it fails."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Release the device(s). Safe to call twice."""

    @abc.abstractmethod
    def get_observation(self) -> Observation:
        """Read timestamped frames from every camera and the joint state."""

    @abc.abstractmethod
    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Command the arm; return the action actually sent (after any clamping)."""

    @property
    @abc.abstractmethod
    def action_spec(self) -> ActionSpec:
        """The declared action space, bounds included."""

    @property
    @abc.abstractmethod
    def observation_features(self) -> dict[str, Any]:
        """Feature name -> shape/dtype description, in LeRobot's style (``{"state": (6,), "front": (128, 128, 3)}``)."""

    @property
    def action_features(self) -> dict[str, Any]:
        """Action component name -> ``float`` (LeRobot's style), from :attr:`action_spec`."""
        return {name: float for name in self.action_spec.names}

    def _require_connected(self) -> None:
        if not self.is_connected:
            raise NotConnectedError(
                f"{self.name} is not connected; call connect() or use it as a context manager"
            )

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()


@runtime_checkable
class EpisodicRobot(Protocol):
    """A robot that can frame episodes: reset the scene, name the task, judge success.

    ``SimRobot`` does all of it itself; on a physical arm an operator resets the scene and
    presses the success key, behind the same members.
    """

    def start_episode(self, seed: int | None = None, split: str | None = None) -> Observation:
        """Set up a new episode and return its first observation."""
        ...

    @property
    def instruction(self) -> str:
        """The current episode's language instruction."""
        ...

    @property
    def step_limit(self) -> int:
        """Steps before the episode is cut off."""
        ...

    def success(self) -> bool:
        """Whether the task is done now."""
        ...
