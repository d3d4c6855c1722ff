"""Small real networks that implement the servable interfaces.

They let the server, the export and the benchmarks run before the VLA policy and the
progress critic land, and keep tests fast: a shared conv encoder per view, FiLM-conditioned
on the instruction embedding (language conditions vision, as the real models will), and an
MLP head. :class:`FixedCostPolicy` adds a known per-batch or per-sample cost, to measure
the wire against a model whose time is known.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn


class FiLMConvEncoder(nn.Module):
    """``uint8[N, H, W, 3]`` frames -> ``float32[N, width]`` features, modulated by language."""

    def __init__(self, lang_dim: int, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=5, stride=2, padding=2)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=2, padding=1)
        self.film = nn.Linear(lang_dim, 2 * width)
        self.width = width

    def forward(self, frames: torch.Tensor, lang: torch.Tensor) -> torch.Tensor:
        """``lang`` is ``float32[N, lang_dim]``, one row per frame."""
        x = frames.permute(0, 3, 1, 2).float() * (1.0 / 255.0)
        x = torch.relu(self.conv1(x))
        gamma, beta = self.film(lang).chunk(2, dim=-1)
        x = self.conv2(x) * (1.0 + gamma[:, :, None, None]) + beta[:, :, None, None]
        return torch.relu(x).mean(dim=(2, 3))


class SmallConvPolicy(nn.Module):
    """A servable policy: per-view FiLM conv features + state -> tanh action chunk."""

    def __init__(
        self,
        views: Sequence[str] = ("front", "wrist"),
        image_hw: Sequence[int] = (64, 64),
        state_dim: int = 6,
        action_dim: int = 7,
        chunk_len: int = 4,
        lang_dim: int = 32,
        width: int = 16,
        seed: int = 0,
    ):
        super().__init__()
        self.views = tuple(views)
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)
        self.chunk_len, self.lang_dim = int(chunk_len), int(lang_dim)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # same seed, same weights: a server and a test agree
        self.encoder = FiLMConvEncoder(self.lang_dim, width)
        self.head = nn.Sequential(
            nn.Linear(len(self.views) * width + self.state_dim + self.lang_dim, 64),
            nn.ReLU(),
            nn.Linear(64, self.chunk_len * self.action_dim),
        )
        torch.random.set_rng_state(generator_state)

    def forward(
        self, images: torch.Tensor, state: torch.Tensor, lang: torch.Tensor
    ) -> torch.Tensor:
        """``uint8[B, V, H, W, 3]``, ``float32[B, S]``, ``float32[B, D]`` -> ``float32[B, chunk, A]``."""
        b, v, h, w, c = images.shape
        feats = self.encoder(images.reshape(b * v, h, w, c), lang.repeat_interleave(v, dim=0))
        x = torch.cat([feats.reshape(b, v * self.encoder.width), state, lang], dim=-1)
        return torch.tanh(self.head(x)).reshape(b, self.chunk_len, self.action_dim)


class SmallConvCritic(nn.Module):
    """A servable pairwise progress critic: ``(o_a, o_b, lang)`` -> (progress, done probability)."""

    def __init__(
        self,
        views: Sequence[str] = ("front", "wrist"),
        image_hw: Sequence[int] = (64, 64),
        lang_dim: int = 32,
        width: int = 16,
        seed: int = 1,
    ):
        super().__init__()
        self.views = tuple(views)
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.lang_dim = int(lang_dim)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.encoder = FiLMConvEncoder(self.lang_dim, width)
        feat = len(self.views) * width
        self.progress_head = nn.Sequential(nn.Linear(3 * feat, 64), nn.ReLU(), nn.Linear(64, 1))
        self.done_head = nn.Sequential(nn.Linear(feat, 32), nn.ReLU(), nn.Linear(32, 1))
        torch.random.set_rng_state(generator_state)

    def _features(self, images: torch.Tensor, lang: torch.Tensor) -> torch.Tensor:
        b, v, h, w, c = images.shape
        feats = self.encoder(images.reshape(b * v, h, w, c), lang.repeat_interleave(v, dim=0))
        return feats.reshape(b, v * self.encoder.width)

    def forward(
        self, images_a: torch.Tensor, images_b: torch.Tensor, lang: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two ``uint8[B, V, H, W, 3]`` batches -> ``progress float32[B]``, ``done_prob float32[B]``."""
        fa, fb = self._features(images_a, lang), self._features(images_b, lang)
        progress = torch.tanh(self.progress_head(torch.cat([fa, fb, fb - fa], dim=-1))).squeeze(-1)
        done = torch.sigmoid(self.done_head(fb)).squeeze(-1)
        return progress, done


WAITS = ("sleep", "spin")


def wait_until(end_s: float, how: str = "spin") -> None:
    """Return when ``time.perf_counter()`` reaches ``end_s``, releasing the GIL meanwhile.

    ``spin`` keeps the core busy checking the clock (as a CUDA stream sync does by default),
    releasing the GIL between checks so other threads of the server run; ``sleep`` sleeps
    until 1 ms before, leaving the core idle, then spins the rest, so the sleep's late wake-up
    (tens to hundreds of microseconds on a loaded or virtual machine) never lengthens the wait.
    """
    if how == "sleep":
        ahead = end_s - time.perf_counter() - 1e-3
        if ahead > 0:
            time.sleep(ahead)
    elif how != "spin":
        raise ValueError(f"wait: expected one of {WAITS}, got {how!r}")
    while time.perf_counter() < end_s:
        time.sleep(0)  # releases the GIL; unlike sched_yield it does not hand the core away


class FixedCostPolicy(nn.Module):
    """A servable policy whose forward takes a known time: ``cost_s`` per batch or per sample.

    The forward computes a cheap deterministic function of the inputs (so replies can be
    checked), then waits (:func:`wait_until`) until ``cost_s`` after it began: it lasts the
    cost, its own torch work included, late only by the scheduler's wake-up of its thread.
    """

    def __init__(
        self,
        views: Sequence[str] = ("front", "wrist"),
        image_hw: Sequence[int] = (224, 224),
        state_dim: int = 6,
        action_dim: int = 7,
        chunk_len: int = 4,
        lang_dim: int = 32,
        cost_s: float = 0.005,
        per: str = "batch",
        wait: str = "sleep",
    ):
        super().__init__()
        if per not in ("batch", "sample"):
            raise ValueError(f"per: expected 'batch' or 'sample', got {per!r}")
        if wait not in WAITS:
            raise ValueError(f"wait: expected one of {WAITS}, got {wait!r}")
        self.views = tuple(views)
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)
        self.chunk_len, self.lang_dim = int(chunk_len), int(lang_dim)
        self.cost_s, self.per, self.wait = float(cost_s), per, wait
        self.scale = nn.Parameter(torch.ones(()))

    def forward(
        self, images: torch.Tensor, state: torch.Tensor, lang: torch.Tensor
    ) -> torch.Tensor:
        """``state[:, 0] * scale`` broadcast over the chunk, once the known cost has passed."""
        start = time.perf_counter()
        first = state[:, :1] if state.shape[1] else torch.zeros(state.shape[0], 1)
        value = first * self.scale + 0.0 * images[:, 0, 0, 0, 0:1].float()
        out = value[:, :, None].expand(-1, self.chunk_len, self.action_dim).contiguous()
        cost = self.cost_s * (images.shape[0] if self.per == "sample" else 1)
        wait_until(start + cost, self.wait)
        return out
