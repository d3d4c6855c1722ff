"""The data contracts every part of limbic shares: Observation, ActionSpec, Transition, Episode.

These are the in-process forms. The wire protocol (``limbic.runtime.protocol``) and the
datasets (``limbic.data``) convert to and from them; nothing else invents its own shape.
Every ``validate`` raises :class:`ContractError` naming the field, the value and what was
expected, so a bad frame from a camera or a bad action from a policy is caught at the edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
"""Version of these contracts; the wire protocol and datasets carry it."""


class ContractError(ValueError):
    """A value does not satisfy a limbic data contract; the message names the field."""

    def __init__(self, field_name: str, problem: str):
        self.field = field_name
        super().__init__(f"{field_name}: {problem}")


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"array(dtype={x.dtype}, shape={x.shape})"
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def check_image(name: str, image: Any, shape_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Check one camera frame is ``uint8[H, W, 3]`` (and of ``shape_hw`` when given)."""
    if not isinstance(image, np.ndarray):
        raise ContractError(name, f"expected a numpy uint8[H, W, 3] array, got {_describe(image)}")
    if image.dtype != np.uint8:
        raise ContractError(name, f"expected dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ContractError(name, f"expected shape (H, W, 3), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ContractError(name, f"empty image of shape {image.shape}")
    if shape_hw is not None and tuple(image.shape[:2]) != tuple(shape_hw):
        raise ContractError(
            name,
            f"expected {shape_hw[0]}x{shape_hw[1]} pixels, got {image.shape[0]}x{image.shape[1]}",
        )
    return image


def check_vector(name: str, value: Any, size: int | None = None) -> np.ndarray:
    """Check a finite ``float32[n]`` vector (of length ``size`` when given); return it as float32."""
    if not isinstance(value, np.ndarray):
        raise ContractError(name, f"expected a numpy float32 vector, got {_describe(value)}")
    if value.dtype.kind != "f":
        raise ContractError(name, f"expected a floating-point dtype, got {value.dtype}")
    if value.ndim != 1:
        raise ContractError(name, f"expected a 1-D vector, got shape {value.shape}")
    if size is not None and value.shape[0] != size:
        raise ContractError(name, f"expected {size} values, got {value.shape[0]}")
    if not np.isfinite(value).all():
        i = int(np.flatnonzero(~np.isfinite(value))[0])
        raise ContractError(f"{name}[{i}]", f"must be finite, got {value[i]}")
    return value.astype(np.float32, copy=False)


@dataclass
class Observation:
    """What an arm sees at one control tick.

    ``images`` maps a view name to ``uint8[H, W, 3]``; ``frame_timestamps_ns`` holds each
    frame's capture time (``timestamp_ns`` is the time of the state sample).
    """

    timestamp_ns: int
    images: dict[str, np.ndarray]
    state: np.ndarray
    instruction: str
    episode_id: str
    step: int
    frame_timestamps_ns: dict[str, int] = field(default_factory=dict)

    def validate(
        self,
        views: tuple[str, ...] | list[str] | None = None,
        state_dim: int | None = None,
        image_hw: tuple[int, int] | None = None,
    ) -> Observation:
        """Raise :class:`ContractError` naming the first bad field; return ``self`` when valid."""
        if not isinstance(self.timestamp_ns, int | np.integer) or self.timestamp_ns < 0:
            raise ContractError(
                "timestamp_ns",
                f"expected a non-negative integer, got {_describe(self.timestamp_ns)}",
            )
        if not isinstance(self.images, dict) or not self.images:
            raise ContractError(
                "images", f"expected a non-empty dict view -> image, got {_describe(self.images)}"
            )
        if views is not None:
            missing = [v for v in views if v not in self.images]
            if missing:
                raise ContractError(
                    "images", f"missing view(s) {missing}; have {sorted(self.images)}"
                )
        for view, image in self.images.items():
            if not isinstance(view, str) or not view:
                raise ContractError(
                    "images", f"view names must be non-empty strings, got {_describe(view)}"
                )
            check_image(f"images[{view!r}]", image, image_hw)
        for view, ts in self.frame_timestamps_ns.items():
            if view not in self.images:
                raise ContractError("frame_timestamps_ns", f"timestamp for unknown view {view!r}")
            if not isinstance(ts, int | np.integer) or ts < 0:
                raise ContractError(
                    f"frame_timestamps_ns[{view!r}]",
                    f"expected a non-negative integer, got {_describe(ts)}",
                )
        self.state = check_vector("state", self.state, state_dim)
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise ContractError(
                "instruction", f"expected a non-empty string, got {_describe(self.instruction)}"
            )
        if not isinstance(self.episode_id, str) or not self.episode_id:
            raise ContractError(
                "episode_id", f"expected a non-empty string, got {_describe(self.episode_id)}"
            )
        if not isinstance(self.step, int | np.integer) or self.step < 0:
            raise ContractError(
                "step", f"expected a non-negative integer, got {_describe(self.step)}"
            )
        return self

    def check_spec(
        self, views: tuple[str, ...] | list[str], state_dim: int, image_hw: tuple[int, int]
    ) -> Observation:
        """For an observation that passed :meth:`validate`: raise unless it fits a model's spec.

        The same checks and messages as ``validate(views, state_dim, image_hw)``, without
        repeating the rest (a server that decoded and validated a request calls this).
        """
        missing = [v for v in views if v not in self.images]
        if missing:
            raise ContractError("images", f"missing view(s) {missing}; have {sorted(self.images)}")
        for view, image in self.images.items():
            check_image(f"images[{view!r}]", image, image_hw)
        if self.state.shape[0] != state_dim:
            raise ContractError("state", f"expected {state_dim} values, got {self.state.shape[0]}")
        return self


class ActionKind(StrEnum):
    """How an action vector is interpreted by the arm."""

    JOINT_DELTA = "joint_delta"
    """Per-joint position change in radians for one control tick, then an absolute gripper command."""
    EE_DELTA = "ee_delta"
    """End-effector translation in metres (and optional yaw in radians) for one tick, then gripper."""


@dataclass(frozen=True)
class ActionSpec:
    """The arm's action space: named components and inclusive bounds.

    The last component is always the gripper command in ``[0, 1]`` (0 open, 1 closed).
    """

    kind: ActionKind
    names: tuple[str, ...]
    low: np.ndarray
    high: np.ndarray

    def __post_init__(self) -> None:
        low = np.asarray(self.low, dtype=np.float32)
        high = np.asarray(self.high, dtype=np.float32)
        if low.shape != (len(self.names),) or high.shape != (len(self.names),):
            raise ContractError(
                "ActionSpec",
                f"low/high must have shape ({len(self.names)},), got {low.shape}/{high.shape}",
            )
        if np.any(low > high):
            i = int(np.flatnonzero(low > high)[0])
            raise ContractError(
                f"ActionSpec.low[{self.names[i]}]", f"{low[i]} is above high {high[i]}"
            )
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "kind", ActionKind(self.kind))

    @property
    def dim(self) -> int:
        """Number of action components."""
        return len(self.names)

    def validate(self, action: Any, tolerance: float = 1e-6) -> np.ndarray:
        """Return ``action`` as float32 if it is finite and inside the bounds, else raise.

        Out-of-bounds actions are rejected, never wrapped or clipped silently.
        """
        if not isinstance(action, np.ndarray):
            action = np.asarray(action)
        if action.dtype.kind not in "fiu":
            raise ContractError("action", f"expected a numeric vector, got dtype {action.dtype}")
        if action.shape != (self.dim,):
            raise ContractError(
                "action",
                f"expected shape ({self.dim},) for {self.kind.value} {list(self.names)}, got {action.shape}",
            )
        action = action.astype(np.float32, copy=False)
        for i, name in enumerate(self.names):
            v = float(action[i])
            if not math.isfinite(v):
                raise ContractError(f"action[{name}]", f"must be finite, got {v}")
            if v < self.low[i] - tolerance or v > self.high[i] + tolerance:
                raise ContractError(
                    f"action[{name}]",
                    f"{v:.6g} is outside the declared bounds [{self.low[i]:.6g}, {self.high[i]:.6g}]",
                )
        return np.clip(action, self.low, self.high)

    def clip(self, action: np.ndarray) -> np.ndarray:
        """Clip a finite action into the bounds (for policies that produce near-boundary values)."""
        return np.clip(np.asarray(action, dtype=np.float32), self.low, self.high)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (lists), for metadata files and the wire."""
        return {
            "kind": self.kind.value,
            "names": list(self.names),
            "low": self.low.tolist(),
            "high": self.high.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ActionSpec:
        """Inverse of :meth:`to_dict`."""
        for key in ("kind", "names", "low", "high"):
            if key not in d:
                raise ContractError(f"ActionSpec.{key}", "missing")
        return cls(
            ActionKind(d["kind"]), tuple(d["names"]), np.asarray(d["low"]), np.asarray(d["high"])
        )


class EpisodeSource(StrEnum):
    """Which replay partition an episode belongs to."""

    ONLINE = "online"
    DEMO = "demo"
    INTERVENTION = "intervention"


@dataclass
class Transition:
    """One control tick: the observation, the action actually sent, and what followed."""

    observation: Observation
    action: np.ndarray
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    success: bool = False
    intervention: bool = False
    policy_version: int = -1
    info: dict[str, float] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """True on the last tick of an episode, for either reason."""
        return self.terminated or self.truncated


@dataclass
class Episode:
    """A finished episode: its transitions in order plus what the replay needs to file it."""

    episode_id: str
    instruction: str
    transitions: list[Transition]
    source: EpisodeSource = EpisodeSource.ONLINE
    robot_type: str = ""
    fps: int = 10
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        """Whether the task's success signal fired on any tick."""
        return any(t.success for t in self.transitions)

    def __len__(self) -> int:
        return len(self.transitions)

    def validate(self, action_spec: ActionSpec | None = None) -> Episode:
        """Check the episode is non-empty, in step order, consistently shaped, and (optionally) in bounds."""
        if not self.transitions:
            raise ContractError("transitions", f"episode {self.episode_id!r} is empty")
        views = tuple(self.transitions[0].observation.images)
        state_dim = self.transitions[0].observation.state.shape[0]
        for i, t in enumerate(self.transitions):
            try:
                t.observation.validate(views=views, state_dim=state_dim)
            except ContractError as e:
                raise ContractError(
                    f"transitions[{i}].observation.{e.field}", str(e).split(": ", 1)[1]
                ) from None
            if t.observation.step != i:
                raise ContractError(
                    f"transitions[{i}].observation.step", f"expected {i}, got {t.observation.step}"
                )
            if t.observation.episode_id != self.episode_id:
                raise ContractError(
                    f"transitions[{i}].observation.episode_id",
                    f"{t.observation.episode_id!r} != {self.episode_id!r}",
                )
            if action_spec is not None:
                try:
                    action_spec.validate(t.action)
                except ContractError as e:
                    raise ContractError(
                        f"transitions[{i}].{e.field}", str(e).split(": ", 1)[1]
                    ) from None
        if any(t.done for t in self.transitions[:-1]):
            raise ContractError(
                "transitions", "only the last transition may be terminated or truncated"
            )
        return self
