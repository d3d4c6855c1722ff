"""Backbone tokens of whole episodes, and the per-frame cache that makes CPU training feasible.

With a frozen backbone a frame's tokens never change, so they are computed once per frame
and every training pair that uses the frame indexes them; only the small language-
conditioned head runs per pair. With a trainable backbone the tokens are recomputed from
the images for every batch (with gradients).

Given a ``cache_dir``, the tokens of each episode are also kept on disk, one file per episode
named by a digest of everything they depend on (the backbone and its weights, the views, the
image size, the cache dtype and the episode's frames), so another run on the same recordings
(a new head, other labels, a resume) reads them instead of running the backbone again.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from limbic.critic.model import ProgressCritic
from limbic.data.schema import EpisodeArrays
from limbic.policy.encoders.vision import PatchColour, VisionBackbone

CACHE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def episode_images(critic: ProgressCritic, episode: EpisodeArrays) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8[T, V, H, W, 3], present bool[T, V])`` in the critic's view order.

    A view the episode lacks is zero-filled and marked missing; a view of the wrong size is
    an error naming the view, its size and the critic's.
    """
    n = len(episode)
    h, w = critic.image_hw
    out = np.zeros((n, len(critic.views), h, w, 3), dtype=np.uint8)
    present = np.zeros((n, len(critic.views)), dtype=bool)
    if not any(v in episode.images for v in critic.views):
        raise ValueError(
            f"episode {episode.episode_index}: none of the critic's views {list(critic.views)} "
            f"is among the episode's views {sorted(episode.images)}"
        )
    for k, view in enumerate(critic.views):
        if view not in episode.images:
            continue
        frames = episode.images[view]
        if frames.shape != (n, h, w, 3) or frames.dtype != np.uint8:
            raise ValueError(
                f"episode {episode.episode_index} images[{view!r}]: expected uint8{(n, h, w, 3)}, "
                f"got {frames.dtype}{frames.shape} (set critic.model.image_hw to the recorded size)"
            )
        out[:, k] = frames
        present[:, k] = True
    return out, present


@torch.no_grad()
def episode_tokens(
    critic: ProgressCritic, episode: EpisodeArrays, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens float32[T, V, N, C], present bool[T, V])`` of every frame of an episode."""
    images, present = episode_images(critic, episode)
    chunks = [
        critic.encode_frames(images[i : i + batch_size]).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks), torch.from_numpy(present)


def backbone_digest(critic: ProgressCritic, backbone: VisionBackbone | None = None) -> str:
    """Hex digest of what a frame's tokens depend on besides the frame: the backbone's name and
    weights (``backbone``, by default the critic's), the critic's views and image size."""
    backbone = backbone if backbone is not None else critic.backbone
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{backbone.name}|{list(critic.views)}|{list(critic.image_hw)}".encode())
    for key, value in sorted(backbone.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class TokenStore:
    """Per-episode backbone tokens on disk (see the module docstring); tensors only, loaded with
    ``weights_only``. A file that cannot be read is recomputed and rewritten, with a warning.

    With a ``+rgb`` backbone (:class:`PatchColour`) the files hold the inner backbone's tokens,
    the very files a critic on the plain backbone writes and reads, and the colour channels are
    added from the frames when an episode is loaded: switching ``+rgb`` on costs no second
    backbone pass over the recordings."""

    def __init__(self, root: str | Path, critic: ProgressCritic, cache_dtype: str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.critic = critic
        self.dtype = CACHE_DTYPES[cache_dtype]
        backbone = critic.backbone
        self.colour = backbone if isinstance(backbone, PatchColour) else None
        inner = self.colour.inner if self.colour is not None else backbone
        self.prefix = f"{backbone_digest(critic, inner)}|{cache_dtype}"
        self.hits = self.misses = 0

    def path(self, episode: EpisodeArrays) -> Path:
        h = hashlib.blake2b(self.prefix.encode(), digest_size=20)
        for view in sorted(episode.images):
            frames = np.ascontiguousarray(episode.images[view])
            h.update(f"{view}|{frames.dtype}|{frames.shape}".encode())
            h.update(frames.tobytes())
        return self.root / f"{h.hexdigest()}.pt"

    def tokens(self, episode: EpisodeArrays) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [T, V, N, C] in the cache dtype, present bool[T, V])`` of an episode."""
        path = self.path(episode)
        saved = self._load(path, len(episode)) if path.is_file() else None
        if saved is None:
            toks, present = episode_tokens(self.critic, episode)
            toks = toks.to(self.dtype)
            inner = toks[..., : -self.colour.colour_dim] if self.colour is not None else toks
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save({"tokens": inner.clone(), "present": present}, tmp)
            os.replace(tmp, path)  # never a half-written file under the real name
            self.misses += 1
            return toks, present
        self.hits += 1
        toks, present = saved
        if self.colour is not None:
            images, _ = episode_images(self.critic, episode)
            t, v, n = toks.shape[:3]
            flat = torch.from_numpy(images.reshape(t * v, *images.shape[2:]))
            colour = self.colour.colours(flat, n).reshape(t, v, n, -1)
            toks = torch.cat([toks, colour.to(self.dtype)], dim=-1)
        return toks, present

    def _load(self, path: Path, frames: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The saved ``(tokens, present)``, or None (with a warning) where the file cannot be
        read or does not hold ``frames`` frames in the cache dtype."""
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            toks, present = saved["tokens"], saved["present"]
        except Exception as exc:  # noqa: BLE001 - any unreadable file is recomputed
            problem = str(exc)
        else:
            if toks.shape[0] == frames and toks.dtype == self.dtype:
                return toks, present
            problem = f"shape {tuple(toks.shape)}, dtype {toks.dtype}"
        warnings.warn(f"token cache {path}: unreadable ({problem}); recomputing", stacklevel=3)
        return None


class FrameTokens:
    """Tokens for ``(episode, frame)`` index pairs: cached for a frozen backbone, computed otherwise."""

    def __init__(
        self,
        critic: ProgressCritic,
        episodes: list[EpisodeArrays],
        cache_dtype: str = "float16",
        show_progress: bool = False,
        cache_dir: str | Path | None = None,
    ):
        if cache_dtype not in CACHE_DTYPES:
            raise ValueError(
                f"cache_dtype: expected one of {sorted(CACHE_DTYPES)}, got {cache_dtype!r}"
            )
        self.critic = critic
        self.cached = critic.backbone.frozen
        store = TokenStore(cache_dir, critic, cache_dtype) if cache_dir and self.cached else None
        self.store = store
        self.offsets = np.concatenate([[0], np.cumsum([len(e) for e in episodes])]).astype(np.int64)
        present, tokens, images = [], [], []
        for e in tqdm(episodes, desc="frame tokens", disable=not show_progress, leave=False):
            if store is not None:
                toks, mask = store.tokens(e)
                tokens.append(toks)
                present.append(mask)
            elif self.cached:  # keep only the tokens, never a second copy of the images
                toks, mask = episode_tokens(critic, e)
                tokens.append(toks.to(CACHE_DTYPES[cache_dtype]))
                present.append(mask)
            else:
                frames, mask = episode_images(critic, e)
                images.append(torch.from_numpy(frames))
                present.append(torch.from_numpy(mask))
        self.present = torch.cat(present)
        self.tokens: torch.Tensor | None = torch.cat(tokens) if self.cached else None
        self.images: torch.Tensor | None = None if self.cached else torch.cat(images)

    def index(self, episode: np.ndarray, frame: np.ndarray) -> torch.Tensor:
        """Flat frame indices of ``(episode, frame)`` pairs."""
        return torch.from_numpy(self.offsets[episode] + frame)

    def get(self, episode: np.ndarray, frame: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens float32[B, V, N, C], present bool[B, V])`` for the given frames."""
        idx = self.index(episode, frame)
        device = self.critic.pos_embed.device
        if self.tokens is not None:
            return self.tokens[idx].to(device, torch.float32), self.present[idx].to(device)
        return self.critic.encode_frames(self.images[idx]), self.present[idx].to(device)  # type: ignore[index]

    def episode(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All frames of episode ``i`` (no gradients)."""
        s, e = int(self.offsets[i]), int(self.offsets[i + 1])
        if self.tokens is not None:
            return self.tokens[s:e].float(), self.present[s:e]
        with torch.no_grad():
            toks = torch.cat(
                [
                    self.critic.encode_frames(self.images[j : min(j + 64, e)]).cpu()
                    for j in range(s, e, 64)
                ]
            )  # type: ignore[index]
        return toks, self.present[s:e]
