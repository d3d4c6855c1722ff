"""The VLA policy as a whole: frames, instruction and proprioception in, an action chunk out.

Pipeline: every view goes through the shared vision backbone (frozen EfficientNet-Lite0 by
default) to a token map; a fixed linear compression (PCA fitted on demonstration frames)
shrinks each token to ``token_dim`` numbers — these compact tokens are what the replay
stores, once per frame; the actor's language-conditioned encoder and tanh-Gaussian head
turn them, the state and the instruction embedding into a normalised action chunk, which
is mapped back into the arm's declared action bounds.

``VLAPolicy.forward`` is the servable policy interface (``limbic.runtime.servable``):
``uint8[B, V, H, W, 3]``, ``float32[B, S]``, ``float32[B, L]`` -> ``float32[B, chunk, A]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from limbic.contracts import ActionSpec
from limbic.launch.config import require
from limbic.policy.encoders import VisionBackbone, make_backbone
from limbic.policy.rlpd import EMA_KEYS, AgentConfig, ObsShape, RLPDAgent


@dataclass
class PolicyConfig:
    """What the policy sees and how big it is."""

    backbone: str = "efficientnet_lite0:stride16"
    """Vision backbone spec (see ``limbic.policy.encoders``); the critic's default, so tokens are shared."""
    views: tuple[str, ...] = ("front", "wrist")
    """Camera views, in order."""
    image_hw: tuple[int, int] = (128, 128)
    """Frame size in pixels."""
    token_dim: int = 32
    """Numbers per vision token after the fixed PCA compression."""
    token_pool: int = 2
    """Average-pool the square token grid by this factor before compressing (8x8 -> 4x4 at 2)."""
    whiten: bool = False
    """Scale every principal axis of the compressed tokens to unit spread on the fitted frames
    (else the tokens as a whole have unit spread, and the low-variance axes stay small). The
    agent's token noise is in these units, so whitening makes it the same fraction of every
    axis's own spread."""
    chunk_len: int = 1
    """Actions per inference (1 for RL). With more, the learner's transitions are windows of
    ``chunk_len`` steps (n-step targets for the actor-critic; see ``limbic.runtime.replay``)."""
    execute: int = 0
    """Actions of each chunk executed open-loop before the policy is asked again
    (0: the whole chunk)."""
    agent: AgentConfig = field(default_factory=AgentConfig)

    def __post_init__(self) -> None:
        self.views = tuple(self.views)
        self.image_hw = tuple(self.image_hw)
        require(len(self.views) > 0, "policy.views", "needs at least one view")
        require(self.token_dim >= 1, "policy.token_dim", f"must be >= 1, got {self.token_dim}")
        require(self.token_pool >= 1, "policy.token_pool", f"must be >= 1, got {self.token_pool}")
        require(self.chunk_len >= 1, "policy.chunk_len", f"must be >= 1, got {self.chunk_len}")
        require(
            0 <= self.execute <= self.chunk_len,
            "policy.execute",
            f"must be in [0, chunk_len={self.chunk_len}], got {self.execute}",
        )

    @property
    def steps_per_inference(self) -> int:
        """Actions of a chunk executed before the next inference."""
        return self.execute or self.chunk_len


class TokenCompressor(nn.Module):
    """A fixed map of token grids: average-pool ``[..., N, D]`` by ``pool``, then centre and
    project each token on the top-k principal axes -> ``[..., N / pool^2, k]``, scaled so the
    fitted tokens have unit standard deviation overall (the unit of the agent's token noise),
    or, with ``whiten``, so each axis has."""

    def __init__(self, in_dim: int, out_dim: int, pool: int = 1, whiten: bool = False):
        super().__init__()
        self.pool, self.whiten = pool, whiten
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("components", torch.eye(in_dim, out_dim))
        self.register_buffer("scale", torch.ones(()))
        # each axis's spread relative to ``scale`` (ones unless whitening)
        self.register_buffer("axis_scale", torch.ones(out_dim))

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[..., N, D]`` (a square grid of N tokens) -> ``[..., N / pool^2, D]``."""
        if self.pool == 1:
            return tokens.float()
        *lead, n, d = tokens.shape
        side = int(round(n**0.5))
        if side * side != n or side % self.pool:
            raise ValueError(
                f"token_pool={self.pool} needs a square grid divisible by it, got {n} tokens"
            )
        grid = tokens.float().reshape(-1, side, side, d).permute(0, 3, 1, 2)
        grid = torch.nn.functional.avg_pool2d(grid, self.pool)
        return grid.permute(0, 2, 3, 1).reshape(*lead, -1, d)

    @torch.no_grad()
    def fit(self, tokens: torch.Tensor) -> float:
        """Fit on sample token grids ``[..., N, D]``; return the fraction of variance kept."""
        x = self.pooled(tokens)
        x = x.reshape(-1, x.shape[-1])
        mean = x.mean(0)
        _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
        k = self.components.shape[1]
        self.mean.copy_(mean)
        self.components.copy_(vh[:k].T)
        var = s**2
        # the kept components' variance per number: (sum of squared singular values) / rows / k
        self.scale.copy_((var[:k].sum() / max(x.shape[0] - 1, 1) / k).sqrt().clamp_min(1e-6))
        if self.whiten:
            axis_std = (var[:k] / max(x.shape[0] - 1, 1)).sqrt()
            self.axis_scale.copy_((axis_std / self.scale).clamp_min(1e-3))
        return float(var[:k].sum() / var.sum())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        projected = (self.pooled(tokens) - self.mean) @ self.components
        return projected / (self.scale * self.axis_scale)


class FrameTokens(nn.Module):
    """Frames ``uint8[B, H, W, 3]`` (or float in [0, 1]) -> compact tokens ``[B, N, k]`` with
    gradients: a trainable backbone, then the fixed compressor (what the agent learns through)."""

    def __init__(self, backbone: VisionBackbone, compressor: TokenCompressor):
        super().__init__()
        self.backbone, self.compressor = backbone, compressor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.compressor(self.backbone(images))


class VLAPolicy(nn.Module):
    """Backbone + token compressor + RLPD agent, with the servable policy interface."""

    def __init__(
        self,
        cfg: PolicyConfig,
        action_spec: ActionSpec,
        state_dim: int,
        lang_dim: int = 384,
        backbone: VisionBackbone | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.cfg = cfg
        self.views = cfg.views
        self.image_hw = cfg.image_hw
        self.state_dim = state_dim
        self.action_dim = action_spec.dim
        self.chunk_len = cfg.chunk_len
        self.lang_dim = lang_dim
        self.action_spec = action_spec
        if cfg.agent.localiser_skip and tuple(action_spec.names[:3]) != ("dx", "dy", "dz"):
            raise ValueError(
                "policy.agent.localiser_skip: needs an end-effector action space (dx, dy, dz "
                f"first, as the localiser's offset), got components {list(action_spec.names)}"
            )
        self.backbone = backbone if backbone is not None else make_backbone(cfg.backbone)
        self.n_tokens = self.backbone.num_tokens(cfg.image_hw) // cfg.token_pool**2
        self.compressor = TokenCompressor(
            self.backbone.feature_dim, cfg.token_dim, cfg.token_pool, cfg.whiten
        )
        self.agent = RLPDAgent(
            cfg.agent,
            ObsShape(
                len(cfg.views),
                self.n_tokens,
                cfg.token_dim,
                state_dim,
                lang_dim,
                self.action_dim,
                cfg.chunk_len,
            ),
            seed=seed,
        )
        self.register_buffer("action_low", torch.as_tensor(action_spec.low, dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(action_spec.high, dtype=torch.float32))
        self.explore = False
        """Serve sampled actions (an RL actor's exploration) instead of the deterministic mean."""
        if not self.backbone.frozen:  # the replay keeps frames; updates train the backbone
            self.agent.attach_frames(FrameTokens(self.backbone, self.compressor))

    @property
    def trains_backbone(self) -> bool:
        """Whether learning trains the backbone (the replay then stores frames, not tokens)."""
        return not self.backbone.frozen

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """What the replay stores per frame: the compact tokens' shape, or, when the backbone
        trains, the frames' ``(views, H, W, 3)``."""
        if self.trains_backbone:
            return (len(self.views), *self.image_hw, 3)
        return self.token_shape

    @property
    def frame_dtype(self) -> type:
        """The stored frames' dtype: float16 tokens, or uint8 pixels for a trainable backbone."""
        return np.uint8 if self.trains_backbone else np.float16

    @property
    def device(self) -> torch.device:
        """Where the policy's weights are (inputs are moved there)."""
        return self.action_low.device

    @property
    def token_shape(self) -> tuple[int, int, int]:
        """Shape of one frame's compact tokens: ``(views, tokens per view, token_dim)``."""
        return (len(self.views), self.n_tokens, self.cfg.token_dim)

    @torch.no_grad()
    def backbone_tokens(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``uint8[B, V, H, W, 3]`` -> full backbone tokens ``float32[B, V, N, C]``."""
        images = torch.as_tensor(images).to(self.device)
        b, v = images.shape[:2]
        tokens = self.backbone(images.reshape(b * v, *images.shape[2:]))
        return tokens.reshape(b, v, *tokens.shape[1:])

    @torch.no_grad()
    def compact_tokens(self, backbone_tokens: torch.Tensor) -> torch.Tensor:
        """Full backbone tokens -> the compact tokens the replay stores."""
        return self.compressor(backbone_tokens)

    def denormalize(self, action: torch.Tensor) -> torch.Tensor:
        """``[-1, 1]`` actions -> the arm's units (inside the declared bounds)."""
        return self.action_low + (action + 1.0) * 0.5 * (self.action_high - self.action_low)

    @torch.no_grad()
    def act_tokens(
        self,
        tokens: torch.Tensor,
        state: torch.Tensor,
        lang: torch.Tensor,
        deterministic: bool = True,
    ) -> torch.Tensor:
        """Compact tokens -> action chunk ``[B, chunk, A]`` in the arm's units."""
        a = self.agent.act(tokens, state, lang, deterministic=deterministic)
        return self.denormalize(a.view(a.shape[0], self.chunk_len, self.action_dim))

    @torch.no_grad()
    def forward(
        self, images: torch.Tensor, state: torch.Tensor, lang: torch.Tensor
    ) -> torch.Tensor:
        """The servable interface: action chunk ``float32[B, chunk, A]``, deterministic unless
        :attr:`explore` (then sampled from the policy, as online RL collection needs)."""
        tokens = self.compact_tokens(self.backbone_tokens(images))
        return self.act_tokens(tokens, state.float(), lang.float(), deterministic=not self.explore)

    # --- checkpoints ---------------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict | None = None) -> None:
        """Write config, action space, weights and the agent's full training state to ``path``
        (a trainable backbone's weights too; a frozen one comes from its package)."""
        weights = {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}
        trained = {"backbone": self.backbone.state_dict()} if self.trains_backbone else {}
        torch.save(
            {
                "config": asdict(self.cfg),
                "action_spec": self.action_spec.to_dict(),
                "state_dim": self.state_dim,
                "lang_dim": self.lang_dim,
                "weights": weights,
                "agent": self.agent.checkpoint(),
                **trained,
                **(extra or {}),
            },
            path,
        )

    @classmethod
    def load(
        cls, path: str | Path, backbone: VisionBackbone | None = None, explore: bool = False
    ) -> VLAPolicy:
        """A policy from :meth:`save`; the frozen backbone comes from its package, not the file
        (a checkpoint that carries ``backbone`` weights, as every one of a trainable backbone
        does, restores them). ``explore`` serves sampled actions."""
        # weights_only: tensors and plain containers only, nothing is unpickled into code
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        raw = dict(ckpt["config"])
        cfg = PolicyConfig(**{**raw, "agent": AgentConfig(**raw["agent"])})
        spec = ActionSpec.from_dict(ckpt["action_spec"])
        policy = cls(cfg, spec, ckpt["state_dim"], ckpt["lang_dim"], backbone)
        missing, unexpected = policy.load_state_dict(ckpt["weights"], strict=False)
        # checkpoints from before the compressor scaled its tokens keep the unit scale
        missing = [k for k in missing if k not in ("compressor.scale", "compressor.axis_scale")]
        # checkpoints from before the acting average: restore() below starts it as the live actor
        missing = [k for k in missing if not k.startswith(tuple(f"agent.{e}" for e in EMA_KEYS))]
        if unexpected or any(not k.startswith("backbone.") for k in missing):
            raise ValueError(
                f"{path}: weights do not fit this policy (missing {missing}, unexpected {unexpected})"
            )
        if "backbone" in ckpt and backbone is None:
            policy.backbone.load_state_dict(ckpt["backbone"])
        policy.agent.restore(ckpt["agent"])
        policy.explore = bool(explore)
        return policy
