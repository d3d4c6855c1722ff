"""The on-disk episode format: LeRobotDataset v3.0 features that limbic writes and reads.

Demonstrations, interventions and rollouts all use this one schema, so any of them opens in
the LeRobot ecosystem (``LeRobotDataset(repo_id, root=...)``) and comes back to limbic.
The instruction is LeRobot's per-frame ``task`` string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

IMAGE_PREFIX = "observation.images."
STATE = "observation.state"
ACTION = "action"
REWARD = "next.reward"
SUCCESS = "next.success"
DONE = "next.done"
INTERVENTION = "intervention"
POLICY_VERSION = "policy_version"
CAPTURE_TIME = "observation.timestamp_ns"
TASK_PROGRESS = "task_progress"
"""Optional per-frame float32 feature with the task's true progress in [0, 1] (simulation
can provide it); when present it lands in ``EpisodeArrays.metadata["progress"]``, where the
critic's labels use it instead of the time-based progress of successful episodes (and where a
failure gets progress labels at all)."""
"""Capture time of the state sample, int64 nanoseconds (LeRobot's ``timestamp`` is episode-relative seconds)."""


def image_key(view: str) -> str:
    """Dataset key of a camera view (``front`` -> ``observation.images.front``)."""
    return IMAGE_PREFIX + view


def dataset_features(
    views: list[str] | tuple[str, ...],
    image_hw: tuple[int, int],
    state_names: list[str] | tuple[str, ...],
    action_names: list[str] | tuple[str, ...],
    use_videos: bool = True,
    task_progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """LeRobot feature dict for an arm with ``views`` cameras of ``image_hw`` pixels (and the
    task's true progress per frame with ``task_progress``)."""
    h, w = image_hw
    image_dtype = "video" if use_videos else "image"
    features: dict[str, dict[str, Any]] = {}
    for view in views:
        features[image_key(view)] = {
            "dtype": image_dtype,
            "shape": (h, w, 3),
            "names": ["height", "width", "channels"],
        }
    features[STATE] = {"dtype": "float32", "shape": (len(state_names),), "names": list(state_names)}
    features[ACTION] = {
        "dtype": "float32",
        "shape": (len(action_names),),
        "names": list(action_names),
    }
    features[REWARD] = {"dtype": "float32", "shape": (1,), "names": None}
    features[SUCCESS] = {"dtype": "bool", "shape": (1,), "names": None}
    features[DONE] = {"dtype": "bool", "shape": (1,), "names": None}
    features[INTERVENTION] = {"dtype": "bool", "shape": (1,), "names": None}
    features[POLICY_VERSION] = {"dtype": "int64", "shape": (1,), "names": None}
    features[CAPTURE_TIME] = {"dtype": "int64", "shape": (1,), "names": None}
    if task_progress:
        features[TASK_PROGRESS] = {"dtype": "float32", "shape": (1,), "names": None}
    return features


@dataclass
class EpisodeArrays:
    """One episode held as whole arrays: what training code (critic, learner) consumes.

    ``images[view]`` is ``uint8[T, H, W, 3]``; ``state`` is ``float32[T, n]``; ``action`` is
    ``float32[T, A]``; ``success``/``done``/``intervention`` are ``bool[T]`` (per step, "after
    this action"). ``instruction`` is the language task.
    """

    episode_index: int
    instruction: str
    images: dict[str, np.ndarray]
    state: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    success: np.ndarray
    done: np.ndarray
    intervention: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.state.shape[0])

    @property
    def succeeded(self) -> bool:
        """Whether the task's success signal fired at any step."""
        return bool(self.success.any())
