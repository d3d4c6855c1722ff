"""The pairwise vision-language progress critic.

``ProgressCritic(images_a, images_b, lang)`` predicts the signed progress ``c ∈ [-1, 1]``
from observation ``a`` to observation ``b`` of one episode under an instruction, and the
probability that the task is done at ``b``. It is built in three stages so that the cost
stays low on a CPU:

1. :meth:`ProgressCritic.encode_frames` — the vision backbone turns every view of a frame
   into tokens. With a frozen backbone this is a pure function of the frame: training
   computes it once per frame and reuses it across every pair; a control loop computes it
   once per tick and reuses the previous tick's tokens.
2. :meth:`ProgressCritic.embed_frame` — language conditions vision: the instruction
   modulates every token (FiLM, twice with residuals) and then chooses where to look
   (attention pooling with instruction-dependent queries) over the tokens of all views
   together, so views are fused inside the model and a missing view is simply masked out.
3. :meth:`ProgressCritic.pair_head` / :meth:`ProgressCritic.done_head` — small MLPs on the
   two frame embeddings and the instruction.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch idiom)
from torch import nn

from limbic.launch.config import require
from limbic.policy.encoders import LanguageEncoder, VisionBackbone, make_backbone

DEFAULT_DONE_THRESHOLD = 0.5

CHECKPOINT_FORMAT = "limbic.critic/1"


@dataclass
class CriticModelConfig:
    """Architecture of the progress critic."""

    backbone: str = "efficientnet_lite0:stride16"
    """Vision backbone: ``efficientnet_lite0[:stride16]`` (frozen, ImageNet), ``small_cnn`` or
    ``hf:<folder>``; with ``+rgb`` appended, each token also carries its image cell's mean colour
    (``PatchColour``), which the critic projects on its own, beside the backbone's features.

    The default takes EfficientNet-Lite0's stride-16 features: on the toy push task they gave
    held-out VOC 0.95 against 0.85 for the stride-32 head features, at half the backbone cost."""
    views: list[str] = field(default_factory=lambda: ["front", "wrist"])
    """Camera view names, in the order of the ``V`` axis of the image tensors."""
    image_hw: list[int] = field(default_factory=lambda: [128, 128])
    """Input image height and width in pixels."""
    lang_dim: int = 384
    """Instruction embedding size (all-MiniLM-L6-v2: 384)."""
    d_model: int = 128
    """Width of the token and frame embeddings."""
    pool_heads: int = 4
    """Instruction-conditioned attention-pooling queries per frame."""
    dropout: float = 0.1
    """Dropout in the heads (training only)."""
    match_gate: bool = True
    """Gate progress by an instruction-match head: ``c = tanh(pair) * sigmoid(match)``, where
    ``match`` is trained as a classifier of "this instruction is what the episode is doing"
    (mismatched pairs are its negatives), so a wrong instruction scales progress towards 0."""
    reference_done: bool = False
    """A second done head that reads no instruction: is frame ``b`` finished the way a reference
    demonstration's goal frame is? The goal frame is embedded without language and then takes
    the instruction's place in embedding ``b`` (FiLM and the pooling queries), so the reference,
    not the instruction's words, says which object and colour count. Trained on goal frames of
    other successes with the same instruction; scored with the references
    ``limbic-eval-critic`` is given (``eval.done_from``)."""
    reference_abs_diff: bool = False
    """Also give the reference done head ``|z_b − z_goal|``: "how far is ``b`` from the goal
    frame" as features a linear read-out can use for objects and colours training never showed,
    where ``z_b − z_goal`` alone leaves the head to learn sameness colour by colour."""
    reference_token_diff: bool = False
    """Also give the reference done head a token-by-token comparison of frame ``b`` with the goal
    frame: ``|x_b − x_goal|`` of the two frames' projected tokens at each position of each view,
    pooled by a learned, language-free attention over the positions. The pooled frame embeddings
    keep what the instruction (or the goal) asks them to look at and can lose what sits between
    the jaws; a camera that moves with the tool (the wrist view) sees a finished task at the same
    place in every episode, so there "the same tokens as the goal frame here" is a comparison that
    does not depend on which colours or objects training showed."""
    reference_tokens_only: bool = False
    """With ``reference_token_diff``: the reference done head reads the place-by-place comparison
    alone, not the frame embeddings, so it cannot judge "finished-looking" without comparing
    the frame with its reference."""
    reference_veto: bool = False
    """With ``reference_token_diff``: the reference done probability is the product of two heads,
    ``σ(a) · σ(b)``: ``a`` reads the frame and goal embeddings (the head without the comparison)
    and ``b`` reads the place-by-place comparison alone. A frame is done when it looks finished
    *and* matches its reference where the comparison looks; the veto ``b`` only has to say
    "this is (not) the reference's outcome", which it learns where the embeddings do not (the
    same colour of ball at another goal), while ``a`` keeps judging the tasks whose done needs
    more than what sits where the goal frame has it."""

    def __post_init__(self) -> None:
        require(
            self.reference_token_diff or not self.reference_tokens_only,
            "critic.model.reference_tokens_only",
            "needs critic.model.reference_token_diff=true (the comparison it reads)",
        )
        require(
            self.reference_token_diff or not self.reference_veto,
            "critic.model.reference_veto",
            "needs critic.model.reference_token_diff=true (the comparison the veto reads)",
        )
        require(
            not (self.reference_veto and self.reference_tokens_only),
            "critic.model.reference_veto",
            "and critic.model.reference_tokens_only are exclusive: the veto is the comparison-only "
            "head beside the embedding head",
        )
        require(
            len(self.views) > 0 and len(set(self.views)) == len(self.views),
            "critic.model.views",
            f"expected distinct view names, got {self.views}",
        )
        require(
            len(self.image_hw) == 2 and min(self.image_hw) >= 16,
            "critic.model.image_hw",
            f"expected [H, W] of at least 16 px, got {self.image_hw}",
        )
        require(
            self.d_model % self.pool_heads == 0,
            "critic.model.d_model",
            f"{self.d_model} must be divisible by pool_heads={self.pool_heads}",
        )
        require(
            0.0 <= self.dropout < 1.0,
            "critic.model.dropout",
            f"expected [0, 1), got {self.dropout}",
        )


class FiLMBlock(nn.Module):
    """Residual token MLP whose normalised input is scaled and shifted by the instruction."""

    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d, elementwise_affine=False)
        self.film = nn.Linear(d, 2 * d)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, tokens: torch.Tensor, lang: torch.Tensor) -> torch.Tensor:
        """``tokens: [B, N, d]``, ``lang: [B, d]`` -> ``[B, N, d]``."""
        gamma, beta = self.film(lang).unsqueeze(1).chunk(2, dim=-1)
        return tokens + self.mlp(self.norm(tokens) * (1 + gamma) + beta)


class ProgressCritic(nn.Module):
    """Pairwise progress critic: ``(images_a, images_b, lang) -> (progress[B], done_prob[B])``.

    Metadata for servers and tools: :attr:`views`, :attr:`image_hw`, :attr:`lang_dim`,
    :attr:`config`. Images are ``uint8[B, V, H, W, 3]`` with views in :attr:`views` order;
    an all-zero view counts as missing unless ``view_mask`` says otherwise.
    """

    def __init__(self, config: CriticModelConfig, backbone: VisionBackbone | None = None):
        super().__init__()
        self.config = config
        self.done_threshold = DEFAULT_DONE_THRESHOLD
        """Done probability from which a frame counts as done; training calibrates it on validation."""
        self.done_thresholds: dict[str, float] = {}
        """The calibrated threshold of each done source (``eval.done_from``) that validation
        scored: ``done_threshold`` is the one of the source training was told to use."""
        self.views: tuple[str, ...] = tuple(config.views)
        self.image_hw: tuple[int, int] = (int(config.image_hw[0]), int(config.image_hw[1]))
        self.lang_dim = config.lang_dim
        self.backbone = backbone if backbone is not None else make_backbone(config.backbone)
        self.num_tokens = self.backbone.num_tokens(self.image_hw)
        d, v = config.d_model, len(self.views)
        k = int(getattr(self.backbone, "colour_dim", 0))
        c = self.backbone.feature_dim - k
        self.colour_dim = k
        """Trailing token channels that are pixel colour (``+rgb`` backbones), projected apart."""
        self.token_proj = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, d))
        self.colour_proj = nn.Linear(k, d) if k else None
        self.view_embed = nn.Parameter(torch.randn(v, 1, d) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, self.num_tokens, d) * 0.02)
        self.lang_proj = nn.Sequential(nn.Linear(config.lang_dim, d), nn.GELU(), nn.Linear(d, d))
        self.film_blocks = nn.ModuleList([FiLMBlock(d), FiLMBlock(d)])
        self.pool_query = nn.Linear(d, d)
        self.pool_key = nn.Linear(d, d)
        self.pool_value = nn.Linear(d, d)
        self.pool_out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d))
        self.pair_mlp = nn.Sequential(
            nn.Linear(4 * d, 2 * d),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(2 * d, d),
            nn.GELU(),
            nn.Linear(d, 1),
        )
        self.done_mlp = nn.Sequential(
            nn.Linear(2 * d, d), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(d, 1)
        )
        self.match_mlp = (
            nn.Sequential(
                nn.Linear(3 * d, d), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(d, 1)
            )
            if config.match_gate
            else None
        )
        if config.reference_done:
            self.null_lang = nn.Parameter(torch.randn(d) * 0.02)
            self.goal_cond = nn.Sequential(
                nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d)
            )
            parts = (
                1
                if config.reference_tokens_only
                else 3
                + int(config.reference_abs_diff)
                + int(config.reference_token_diff and not config.reference_veto)
            )
            if config.reference_token_diff:
                self.diff_norm = nn.LayerNorm(d)
                self.diff_place = nn.Parameter(torch.zeros(v, self.num_tokens, config.pool_heads))
                self.diff_score = nn.Linear(d, config.pool_heads)
                self.diff_value = nn.Linear(d, d)
                self.diff_out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d))
            self.ref_done_mlp = nn.Sequential(
                nn.Linear(parts * d, d), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(d, 1)
            )
            if config.reference_veto:
                self.ref_veto_mlp = nn.Sequential(
                    nn.Linear(d, d), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(d, 1)
                )
        self._language: LanguageEncoder | None = None

    # ----- stage 1: vision tokens (cacheable with a frozen backbone) -----------------------

    def encode_frames(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``uint8[B, V, H, W, 3]`` -> backbone tokens ``float32[B, V, N, C]``."""
        images = self._check_images("images", images)
        b, v = images.shape[:2]
        tokens = self.backbone(images.reshape(b * v, *images.shape[2:]))
        return tokens.reshape(b, v, *tokens.shape[1:])

    # ----- stage 2: language-conditioned frame embedding ------------------------------------

    def embed_lang(self, lang: torch.Tensor) -> torch.Tensor:
        """``float32[B, lang_dim]`` instruction embeddings -> ``float32[B, d_model]``."""
        if lang.ndim != 2 or lang.shape[1] != self.lang_dim:
            raise ValueError(f"lang: expected shape (B, {self.lang_dim}), got {tuple(lang.shape)}")
        return self.lang_proj(lang.float())

    def embed_frame(
        self, tokens: torch.Tensor, lang_d: torch.Tensor, view_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Tokens ``[B, V, N, C]`` + projected instruction ``[B, d]`` -> frame embedding ``[B, d]``.

        ``view_mask: bool[B, V]`` (True = present) drops missing views from the pooling.
        """
        b, v, n, _ = tokens.shape
        if v != len(self.views) or n != self.num_tokens:
            raise ValueError(
                f"tokens: expected (B, {len(self.views)}, {self.num_tokens}, C), got {tuple(tokens.shape)}"
            )
        x = (self._project_tokens(tokens) + self.view_embed + self.pos_embed).reshape(b, v * n, -1)
        for block in self.film_blocks:
            x = block(x, lang_d)
        heads = self.config.pool_heads
        dh = x.shape[-1] // heads
        q = self.pool_query(lang_d).reshape(b, heads, 1, dh)
        k = self.pool_key(x).reshape(b, v * n, heads, dh).transpose(1, 2)
        val = self.pool_value(x).reshape(b, v * n, heads, dh).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(dh)  # [B, heads, 1, V*N]
        if view_mask is not None:
            if view_mask.shape != (b, v):
                raise ValueError(
                    f"view_mask: expected shape ({b}, {v}), got {tuple(view_mask.shape)}"
                )
            if not bool(view_mask.any(dim=1).all()):
                raise ValueError("view_mask: every sample needs at least one present view")
            token_mask = view_mask.to(torch.bool).repeat_interleave(n, dim=1)[:, None, None, :]
            scores = scores.masked_fill(~token_mask, float("-inf"))
        pooled = (scores.softmax(-1) @ val).reshape(b, -1)
        return self.pool_out(pooled)

    def _project_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Backbone tokens ``[B, V, N, C]`` -> ``[B, V, N, d]`` (colour channels projected apart)."""
        tokens = tokens.float()
        if self.colour_proj is None:
            return self.token_proj(tokens)
        k = self.colour_dim
        return self.token_proj(tokens[..., :-k]) + self.colour_proj(tokens[..., -k:])

    # ----- stage 3: heads ------------------------------------------------------------------

    def pair_head(self, z_a: torch.Tensor, z_b: torch.Tensor, lang_d: torch.Tensor) -> torch.Tensor:
        """Frame embeddings of ``a`` and ``b`` -> progress ``float32[B]`` in ``[-1, 1]``."""
        c = torch.tanh(self.pair_mlp(torch.cat([z_a, z_b, z_b - z_a, lang_d], -1)).squeeze(-1))
        if self.match_mlp is not None:
            c = c * torch.sigmoid(self.match_logit(z_a, z_b, lang_d))
        return c

    def match_logit(
        self, z_a: torch.Tensor, z_b: torch.Tensor, lang_d: torch.Tensor
    ) -> torch.Tensor:
        """Logit ``float32[B]`` that the instruction describes what frames ``a`` and ``b`` show."""
        if self.match_mlp is None:
            raise RuntimeError("this critic has no match gate (critic.model.match_gate=false)")
        return self.match_mlp(torch.cat([z_a, z_b, lang_d], -1)).squeeze(-1)

    def done_head(self, z_b: torch.Tensor, lang_d: torch.Tensor) -> torch.Tensor:
        """Frame embedding of ``b`` -> done logit ``float32[B]`` (apply a sigmoid for the probability)."""
        return self.done_mlp(torch.cat([z_b, lang_d], -1)).squeeze(-1)

    def embed_goal(
        self, tokens_g: torch.Tensor, view_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Tokens of reference goal frames ``[R, V, N, C]`` -> language-free embeddings ``[R, d]``."""
        self._need_reference_done()
        null = self.null_lang.expand(tokens_g.shape[0], -1)
        return self.embed_frame(tokens_g, null, view_mask)

    def reference_done_logit(
        self,
        tokens_b: torch.Tensor,
        z_goal: torch.Tensor,
        view_mask: torch.Tensor | None = None,
        tokens_goal: torch.Tensor | None = None,
        goal_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Done logit ``float32[B]`` of frames ``b`` against goal embeddings ``z_goal: [B, d]``
        (:meth:`embed_goal`): frame ``b`` is embedded with the goal in the instruction's place.
        ``tokens_goal: [B, V, N, C]`` (the goal frames' tokens, ``goal_mask`` their present views)
        is needed with ``reference_token_diff``."""
        self._need_reference_done()
        parts = []
        if not self.config.reference_tokens_only:
            cond = self.goal_cond(z_goal)
            z_b = self.embed_frame(tokens_b, cond, view_mask)
            parts = [z_b, z_goal, z_b - z_goal]
            if self.config.reference_abs_diff:
                parts.append((z_b - z_goal).abs())
        if not self.config.reference_token_diff:
            return self.ref_done_mlp(torch.cat(parts, -1)).squeeze(-1)
        if tokens_goal is None:
            raise ValueError(
                "reference_done_logit: tokens_goal is needed with critic.model.reference_token_diff"
            )
        comparison = self.token_difference(tokens_b, tokens_goal, view_mask, goal_mask)
        if not self.config.reference_veto:
            return self.ref_done_mlp(torch.cat([*parts, comparison], -1)).squeeze(-1)
        looks_done = self.ref_done_mlp(torch.cat(parts, -1)).squeeze(-1)
        matches = self.ref_veto_mlp(comparison).squeeze(-1)
        return product_logit(looks_done, matches)

    def token_difference(
        self,
        tokens_b: torch.Tensor,
        tokens_goal: torch.Tensor,
        mask_b: torch.Tensor | None = None,
        mask_goal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``|x_b − x_goal|`` of the projected tokens at each place, pooled over the places that
        both frames have (views present in both) -> ``float32[B, d]``; zeros where they share
        no view (``reference_token_diff``)."""
        b, v, n, _ = tokens_b.shape
        if tokens_goal.shape != tokens_b.shape:
            raise ValueError(
                f"tokens_goal: expected shape {tuple(tokens_b.shape)}, got {tuple(tokens_goal.shape)}"
            )
        diff = self.diff_norm(
            (self._project_tokens(tokens_b) - self._project_tokens(tokens_goal)).abs()
        )
        heads = self.config.pool_heads
        scores = self.diff_score(diff) + self.diff_place  # [B, V, N, heads]
        both = torch.ones(b, v, dtype=torch.bool, device=tokens_b.device)
        if mask_b is not None:
            both = both & mask_b.to(torch.bool)
        if mask_goal is not None:
            both = both & mask_goal.to(torch.bool)
        any_view = both.any(dim=1)  # [B]
        keep = both | ~any_view[:, None]  # rows without a shared view: pooled, then zeroed
        scores = scores.masked_fill(~keep[:, :, None, None], float("-inf"))
        weights = scores.reshape(b, v * n, heads).softmax(dim=1)  # [B, V*N, heads]
        values = self.diff_value(diff).reshape(b, v * n, heads, -1)
        pooled = torch.einsum("bkh,bkhe->bhe", weights, values).reshape(b, -1)
        return self.diff_out(pooled) * any_view[:, None].to(pooled.dtype)

    def _need_reference_done(self) -> None:
        if not self.config.reference_done:
            raise RuntimeError(
                "this critic has no reference done head (critic.model.reference_done=false)"
            )

    def head(
        self,
        tokens_a: torch.Tensor,
        tokens_b: torch.Tensor,
        lang: torch.Tensor,
        mask_a: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached tokens of ``a`` and ``b`` + instruction embeddings -> ``(progress, done_logit)``."""
        lang_d = self.embed_lang(lang)
        z_a = self.embed_frame(tokens_a, lang_d, mask_a)
        z_b = self.embed_frame(tokens_b, lang_d, mask_b)
        return self.pair_head(z_a, z_b, lang_d), self.done_head(z_b, lang_d)

    def forward(
        self,
        images_a: torch.Tensor | np.ndarray,
        images_b: torch.Tensor | np.ndarray,
        lang: torch.Tensor,
        mask_a: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``uint8[B, V, H, W, 3]`` twice + ``float32[B, lang_dim]`` -> ``(progress[B], done_prob[B])``.

        Masks are ``bool[B, V]`` (True = view present); when omitted, all-zero views are missing.
        """
        images_a = self._check_images("images_a", images_a)
        images_b = self._check_images("images_b", images_b)
        mask_a = self.present_views(images_a) if mask_a is None else mask_a
        mask_b = self.present_views(images_b) if mask_b is None else mask_b
        progress, done_logit = self.head(
            self.encode_frames(images_a), self.encode_frames(images_b), lang, mask_a, mask_b
        )
        return progress, torch.sigmoid(done_logit)

    # ----- conveniences --------------------------------------------------------------------

    @property
    def language(self) -> LanguageEncoder:
        """The frozen sentence encoder, created on first use (kept out of the state dict)."""
        if self._language is None:
            object.__setattr__(self, "_language", LanguageEncoder())
        return self._language  # type: ignore[return-value]

    def encode_instructions(self, instructions: list[str]) -> torch.Tensor:
        """Instruction strings -> ``float32[B, lang_dim]`` (cached per string)."""
        lang = self.language(instructions)
        if lang.shape[1] != self.lang_dim:
            raise ValueError(
                f"language encoder gives {lang.shape[1]}-d embeddings; this critic expects {self.lang_dim}"
            )
        return lang.to(self.pos_embed.device)

    @torch.no_grad()
    def predict(
        self,
        images_a: torch.Tensor | np.ndarray,
        images_b: torch.Tensor | np.ndarray,
        instructions: list[str],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`forward` but with instruction strings, in eval mode, returning numpy arrays."""
        was_training = self.training
        self.eval()
        try:
            progress, done = self(images_a, images_b, self.encode_instructions(list(instructions)))
        finally:
            self.train(was_training)
        return progress.cpu().numpy(), done.cpu().numpy()

    def present_views(self, images: torch.Tensor) -> torch.Tensor:
        """``bool[B, V]``: True where a view has any non-zero pixel (a zeroed view is missing)."""
        return images.reshape(*images.shape[:2], -1).ne(0).any(-1)

    def _check_images(self, name: str, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        h, w = self.image_hw
        expected = f"(B, {len(self.views)}, {h}, {w}, 3) for views {list(self.views)}"
        if images.ndim != 5 or tuple(images.shape[1:]) != (len(self.views), h, w, 3):
            raise ValueError(f"{name}: expected shape {expected}, got {tuple(images.shape)}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(
                f"{name}: expected dtype uint8 (or float in [0, 1]), got {images.dtype}"
            )
        return images.to(self.pos_embed.device)

    def train(self, mode: bool = True) -> ProgressCritic:
        """Train mode for the heads; a frozen backbone stays in eval mode."""
        super().train(mode)
        self.backbone.train(mode)
        return self

    def metadata(self) -> dict[str, Any]:
        """What a server advertises: views, image size, language size, backbone, token count."""
        return {
            "views": list(self.views),
            "image_hw": list(self.image_hw),
            "lang_dim": self.lang_dim,
            "backbone": self.config.backbone,
            "num_tokens": self.num_tokens,
            "feature_dim": self.backbone.feature_dim,
        }

    def export_state(self) -> dict[str, Any]:
        """Checkpoint payload that :meth:`from_checkpoint` rebuilds the critic from."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(self.config),
            "model": self.state_dict(),
            "done_threshold": float(self.done_threshold),
            "done_thresholds": {k: float(v) for k, v in self.done_thresholds.items()},
        }

    def load_thresholds(self, state: dict[str, Any]) -> None:
        """The calibrated done thresholds of an :meth:`export_state` payload (0.5 and none
        per source for a critic that was never calibrated)."""
        self.done_threshold = float(state.get("done_threshold", DEFAULT_DONE_THRESHOLD))
        self.done_thresholds = {
            str(k): float(v) for k, v in state.get("done_thresholds", {}).items()
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ProgressCritic:
        """Inverse of :meth:`export_state`."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"critic checkpoint: expected format {CHECKPOINT_FORMAT!r}, got {state.get('format')!r}"
            )
        # critics saved before the match gate existed have none
        critic = cls(CriticModelConfig(**{"match_gate": False, **state["config"]}))
        critic.load_state_dict(state["model"])
        critic.load_thresholds(state)
        return critic

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, map_location: str | torch.device = "cpu"
    ) -> ProgressCritic:
        """Load a critic (in eval mode) from a file written by :meth:`export_state` or by training."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"critic checkpoint {path}: no such file")
        payload = torch.load(
            path, map_location=map_location, weights_only=True
        )  # no code unpickled
        state = payload.get("critic", payload)
        return cls.from_state(state).eval()


def product_logit(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The logit of ``σ(a) · σ(b)``, computed in log space (finite, with finite gradients, for
    any finite ``a`` and ``b``; at most about 13.8, where the product is 1 − 1e-6)."""
    log_p = (F.logsigmoid(a) + F.logsigmoid(b)).clamp(max=-1e-6)
    # log(1 − p) = log(−expm1(log p)) near p = 1, log1p(−p) elsewhere; each branch on safe input
    near_one = log_p > -math.log(2.0)
    log_q = torch.where(
        near_one,
        torch.log(-torch.expm1(log_p.clamp(min=-math.log(2.0)))),
        torch.log1p(-torch.exp(log_p.clamp(max=-math.log(2.0)))),
    )
    return log_p - log_q


def masked_bce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over entries where ``mask`` is true (0 when none are)."""
    mask = mask.float()
    loss = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)
