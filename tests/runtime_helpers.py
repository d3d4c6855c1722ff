"""Shared pieces of the actor/learner tests: a small sim, a servable policy inside its bounds,
a live server, and a stand-in learner endpoint that records what it is sent."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from limbic.launch.components import RobotConfig
from limbic.runtime.backends import TorchRunner
from limbic.runtime.inbox import EpisodeInbox
from limbic.runtime.protocol import EpisodeUpload
from limbic.runtime.servable import CachedInstructionEncoder, HashInstructionEncoder
from limbic.runtime.server import InferenceServer, ServerConfig
from limbic.runtime.small_models import SmallConvPolicy
from limbic.sim.arms import get_arm
from limbic.sim.control import make_action_spec
from limbic.sim.env import SimConfig
from limbic.sim.scene import CameraConfig

HW = (64, 64)
LANG = 16


def sim_config(step_limit: int = 5, task: str = "reach") -> SimConfig:
    """A small, quick simulated arm: 64x64 views, short episodes."""
    return SimConfig(
        task=task, step_limit=step_limit, camera=CameraConfig(height=HW[0], width=HW[1])
    )


def robot_config(**kw: Any) -> RobotConfig:
    return RobotConfig(sim=sim_config(**kw))


class Gate(threading.Event):
    """An event that copies of a module share (the server deep-copies a model for weight swaps)."""

    def __deepcopy__(self, memo: dict) -> Gate:
        return self


class SimPolicy(SmallConvPolicy):
    """A small servable policy whose actions lie inside the sim arm's bounds; can be held.

    While held, every forward waits until released: the server then answers late.
    """

    def __init__(self, sim: SimConfig | None = None, seed: int = 0, chunk_len: int = 1):
        sim = sim or sim_config()
        spec = make_action_spec(get_arm(sim.arm), sim.action)
        super().__init__(
            views=sim.camera.views,
            image_hw=HW,
            state_dim=get_arm(sim.arm).n_joints + 1,
            action_dim=spec.dim,
            chunk_len=chunk_len,
            lang_dim=LANG,
            seed=seed,
        )
        self.register_buffer("low", torch.as_tensor(spec.low))
        self.register_buffer("high", torch.as_tensor(spec.high))
        self.gate = Gate()
        self.gate.set()
        self.calls = 0

    def forward(
        self, images: torch.Tensor, state: torch.Tensor, lang: torch.Tensor
    ) -> torch.Tensor:
        self.calls += 1
        if not self.gate.wait(30):
            raise RuntimeError("the test never opened the gate")
        a = super().forward(images, state, lang)
        return self.low + (a + 1.0) * 0.5 * (self.high - self.low)


def runner(module: Any, version: int = 1) -> TorchRunner:
    return TorchRunner(
        module, "policy", CachedInstructionEncoder(HashInstructionEncoder(LANG)), version, "cpu"
    )


@contextlib.contextmanager
def serving(
    module: Any, version: int = 1, endpoint: str = "tcp://127.0.0.1:*"
) -> Iterator[InferenceServer]:
    """A live inference server of ``module`` at ``version`` (weights endpoint on a free port)."""
    server = InferenceServer(
        ServerConfig(endpoint=endpoint, weights_endpoint="tcp://127.0.0.1:*"),
        runner(module, version),
    ).start()
    try:
        yield server
    finally:
        server.stop()
    server.check()


def free_endpoint() -> str:
    """A loopback TCP endpoint nothing listens on (a port just freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class RecordingLearner:
    """A learner endpoint that stores episodes in memory (once per id) and acknowledges them.

    ``hold`` makes it receive but not store (no acknowledgement) until released.
    """

    def __init__(self, endpoint: str = "tcp://127.0.0.1:*", check=None, **inbox_kwargs: Any):
        self.episodes: dict[str, EpisodeUpload] = {}
        self.stored_order: list[str] = []
        self.received = 0
        self.hold = threading.Event()
        self.inbox = EpisodeInbox(
            endpoint,
            check or (lambda ep: None),
            lambda i: i in self.episodes,
            lambda: {
                "episodes": len(self.episodes),
                "updates": 0,
                "backlog_updates": 0,
                "policy_version": 1,
                "finished": False,
            },
            **inbox_kwargs,
        ).start()
        self.endpoint = self.inbox.endpoint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._store, daemon=True)
        self._thread.start()

    def _store(self) -> None:
        while not self._stop.is_set():
            delivery = self.inbox.get(0.05)
            if delivery is None:
                continue
            self.received += 1
            while self.hold.is_set() and not self._stop.is_set():
                self._stop.wait(0.02)
            ep = delivery.episode
            if ep.episode_id not in self.episodes:
                self.episodes[ep.episode_id] = ep
                self.stored_order.append(ep.episode_id)
            self.inbox.done(ep.episode_id)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.inbox.close()


def episode(
    episode_id: str,
    steps: int = 3,
    seed: int = 0,
    views=("front", "wrist"),
    hw=HW,
    state_dim: int = 6,
    action_dim: int = 4,
) -> EpisodeUpload:
    """A valid synthetic episode message."""
    rng = np.random.default_rng(seed)
    t = steps
    return EpisodeUpload(
        id=seed,
        episode_id=episode_id,
        actor=episode_id.rsplit("-", 1)[0],
        seq=seed,
        source="online",
        instruction="touch the red ball",
        seed=seed,
        split="train",
        images={v: rng.integers(0, 256, (t + 1, *hw, 3), dtype=np.uint8) for v in views},
        state=rng.standard_normal((t + 1, state_dim)).astype(np.float32),
        capture_ns=np.arange(t + 1, dtype=np.int64),
        phi=np.zeros(t + 1, np.float32),
        done_prob=np.zeros(t + 1, np.float32),
        action=rng.uniform(-0.005, 0.005, (t, action_dim)).astype(np.float32),
        reward=np.zeros(t, np.float32),
        success=np.zeros(t, bool),
        terminated=np.zeros(t, bool),
        intervention=np.zeros(t, bool),
        policy_version=np.ones(t, np.int64),
        tick_ns=np.arange(t, dtype=np.int64),
        action_ns=np.arange(t, dtype=np.int64),
    )
