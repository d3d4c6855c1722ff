"""The Teleoperator interface: anything that can play the human at the arm.

Keyboard, gamepad, SpaceMouse and leader arms (LeRobot drivers) implement it, and so does
the scripted operator in simulation. ``is_intervening`` says whether the human is in control
right now; for demonstrations it is always true.
"""

from __future__ import annotations

import abc

import numpy as np

from limbic.contracts import Observation


class Teleoperator(abc.ABC):
    """A source of human (or human-like) actions."""

    name: str = "teleoperator"

    def connect(self) -> None:
        """Open the device; devices with nothing to open need not override."""

    def disconnect(self) -> None:
        """Release the device. Safe to call twice."""

    def on_episode_start(self) -> None:
        """Called when a new episode begins (reset internal state, re-home a leader arm)."""

    @abc.abstractmethod
    def get_action(self, observation: Observation) -> np.ndarray:
        """The operator's action for this tick, in the robot's action space."""

    @property
    @abc.abstractmethod
    def is_intervening(self) -> bool:
        """True while the human is in control."""

    def __enter__(self) -> Teleoperator:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()
