"""Shared helpers for the runtime tests: small real models, live servers on loopback, observations."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from limbic.contracts import Observation
from limbic.runtime.backends import TorchRunner
from limbic.runtime.servable import CachedInstructionEncoder, HashInstructionEncoder
from limbic.runtime.server import InferenceServer, ServerConfig
from limbic.runtime.small_models import SmallConvCritic, SmallConvPolicy

VIEWS = ("front", "wrist")
HW = (24, 32)  # not square, so a transposed image is caught
STATE_DIM, ACTION_DIM, CHUNK, LANG = 5, 3, 4, 16


def encoder(dim: int = LANG) -> CachedInstructionEncoder:
    """The deterministic hash instruction encoder, cached."""
    return CachedInstructionEncoder(HashInstructionEncoder(dim))


def small_policy(seed: int = 0, **kwargs: Any) -> SmallConvPolicy:
    """A small conv policy of the test dimensions."""
    args = dict(
        views=VIEWS,
        image_hw=HW,
        state_dim=STATE_DIM,
        action_dim=ACTION_DIM,
        chunk_len=CHUNK,
        lang_dim=LANG,
    )
    return SmallConvPolicy(**{**args, **kwargs}, seed=seed)


def small_critic(seed: int = 1) -> SmallConvCritic:
    """A small pairwise progress critic of the test dimensions."""
    return SmallConvCritic(views=VIEWS, image_hw=HW, lang_dim=LANG, seed=seed)


def policy_runner(module: Any | None = None, version: int = 0) -> TorchRunner:
    """A CPU torch runner of ``module`` (default: a small policy)."""
    return TorchRunner(
        module if module is not None else small_policy(), "policy", encoder(), version, "cpu"
    )


def critic_runner(module: Any | None = None) -> TorchRunner:
    """A CPU torch runner of ``module`` (default: a small critic)."""
    return TorchRunner(
        module if module is not None else small_critic(), "critic", encoder(), 0, "cpu"
    )


def frames(rng: np.random.Generator, hw: tuple[int, int] = HW) -> dict[str, np.ndarray]:
    """One random frame per view."""
    return {v: rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for v in VIEWS}


def make_obs(
    rng: np.random.Generator, step: int = 0, instruction: str = "pick up the red cube"
) -> Observation:
    """A valid random observation for the test policy."""
    return Observation(
        timestamp_ns=time.time_ns(),
        images=frames(rng),
        state=rng.standard_normal(STATE_DIM).astype(np.float32),
        instruction=instruction,
        episode_id="ep-0",
        step=step,
        frame_timestamps_ns={v: time.time_ns() for v in VIEWS},
    )


def local_actions(module: Any, obs: Observation) -> np.ndarray:
    """What ``module`` answers for ``obs`` when called directly (the reference for server replies)."""
    images = torch.from_numpy(np.stack([obs.images[v] for v in VIEWS])[None])
    lang = torch.from_numpy(HashInstructionEncoder(module.lang_dim).encode([obs.instruction]))
    with torch.inference_mode():
        return module(images, torch.from_numpy(obs.state[None]), lang)[0].numpy()


def config(**overrides: Any) -> ServerConfig:
    """Server settings on free loopback ports."""
    settings = dict(endpoint="tcp://127.0.0.1:*", weights_endpoint="tcp://127.0.0.1:*")
    return ServerConfig(**{**settings, **overrides})


@contextlib.contextmanager
def running_server(
    policy: Any = "default", critic: Any = None, **overrides: Any
) -> Iterator[InferenceServer]:
    """A live server for the ``with`` block; it is stopped after, and must not have crashed."""
    policy = policy_runner() if policy == "default" else policy
    server = InferenceServer(config(**overrides), policy, critic).start()
    try:
        yield server
    finally:
        server.stop()
    server.check()


def wait_until(
    condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until true; fail the test after ``timeout_s`` (a bound, not a measurement)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class GatedPolicy(SmallConvPolicy):
    """A small policy whose forward can be held: after ``hold()`` each call waits for a permit.

    The server runs batches on one thread, so holding the model holds the server: requests sent
    meanwhile wait in the socket and are read together when the model lets go.
    """

    def __init__(self, **kwargs: Any):
        dims = dict(
            views=VIEWS,
            image_hw=HW,
            state_dim=STATE_DIM,
            action_dim=ACTION_DIM,
            chunk_len=CHUNK,
            lang_dim=LANG,
        )
        super().__init__(**{**dims, **kwargs})
        self._open = threading.Event()
        self._open.set()
        self._permits = threading.Semaphore(0)
        self.calls = 0

    def hold(self) -> None:
        """From now on every forward waits for :meth:`release` (or :meth:`open`)."""
        self._open.clear()

    def release(self, n: int = 1) -> None:
        """Let ``n`` held forward calls through."""
        self._permits.release(n)

    def open(self) -> None:
        """Stop holding."""
        self._open.set()

    def forward(
        self, images: torch.Tensor, state: torch.Tensor, lang: torch.Tensor
    ) -> torch.Tensor:
        """Count the call, wait while held (bounded), then act as the small policy."""
        self.calls += 1
        deadline = time.monotonic() + 30
        while not self._open.is_set() and not self._permits.acquire(timeout=0.01):
            if time.monotonic() > deadline:
                raise RuntimeError("test never released the held model")
        return super().forward(images, state, lang)


def let_loopback_deliver() -> None:
    """Give sent loopback messages time to reach the server's socket (a margin, not a measurement)."""
    time.sleep(0.5)
