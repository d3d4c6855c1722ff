"""The safety envelope's slot: every action passes through it on its way to the arm.

The actor loop calls :meth:`SafetyEnvelope.filter` once per tick with the observation the
action was computed from and the action the arbiter chose; what it returns is what the arm
gets. The deployment issue fills this slot with joint and workspace limits, a per-step
motion limit, a watchdog and an e-stop; until then :class:`ActionBoundsEnvelope` only
enforces the declared action bounds.
"""

from __future__ import annotations

import abc

import numpy as np

from limbic.contracts import ActionSpec, Observation


class SafetyEnvelope(abc.ABC):
    """Makes an action safe to send, or raises; one instance per arm."""

    name: str = "envelope"

    def on_episode_start(self, observation: Observation) -> None:
        """Called with the first observation of each episode (reset per-episode limits here)."""

    @abc.abstractmethod
    def filter(self, observation: Observation, action: np.ndarray) -> np.ndarray:
        """The action to send (float32, inside the declared bounds); raise to stop the arm."""


class ActionBoundsEnvelope(SafetyEnvelope):
    """Pass-through: checks the action is finite and inside the declared bounds.

    Rounding at the edge (a policy's tanh output mapped to the bounds) is clipped; anything
    further out raises :class:`~limbic.contracts.ContractError` naming the component.
    """

    name = "bounds"

    def __init__(self, spec: ActionSpec):
        self.spec = spec

    def filter(self, observation: Observation, action: np.ndarray) -> np.ndarray:
        return self.spec.validate(action, tolerance=1e-5)
