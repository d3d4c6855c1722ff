"""The VLA actor's trainable parts: a language-conditioned observation encoder, a tanh-Gaussian
action head over an action chunk, and an ensemble of Q heads.

They work on *tokens* — the vision backbone's per-view feature maps — so that with a frozen
backbone the tokens are computed once per frame at acting time and stored in the replay, and
learner updates never run the backbone. Language conditions vision twice: FiLM on every
token, and the attention-pooling queries that decide where each view looks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch idiom)
from torch import nn

from limbic.policy.losses import bc_loss

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
POSITIONS = ("learned", "grid", "both")
"""How the encoder places tokens (``AgentConfig.position``)."""
POOLINGS = ("attention", "flatten", "keypoints", "attention_keypoints")
"""How the encoder reduces each view's tokens (``AgentConfig.pooling``)."""
WAYPOINT_SOURCES = ("feature", "tokens", "pretrained")
"""What the waypoint head reads (``AgentConfig.waypoint_source``): the pooled feature, or the
token grids and the state through a localiser of its own (``tokens``: trained by the waypoint
loss; ``pretrained``: fitted once, before cloning, on labelled views, then frozen)."""


def grid_coordinates(n_tokens: int) -> torch.Tensor:
    """``float32[N, 2]``: (x, y) in [-1, 1] of each token of a square, row-major grid."""
    side = int(round(n_tokens**0.5))
    if side * side != n_tokens:
        raise ValueError(f"grid positions need a square token grid, got {n_tokens} tokens")
    ticks = torch.linspace(-1.0, 1.0, side) if side > 1 else torch.zeros(1)
    yy, xx = torch.meshgrid(ticks, ticks, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], dim=-1)


def random_shift(images: torch.Tensor, pad: int, offsets: torch.Tensor) -> torch.Tensor:
    """Shift each frame by whole pixels (DrQ's augmentation): pad by ``pad`` repeating the edge
    pixels, then crop the original size at ``offsets`` (``long[B, 2]``, row and column in
    ``[0, 2 * pad]``; ``pad, pad`` is the frame itself).

    ``images``: ``[B, H, W, C]`` (uint8 or float) -> float ``[B, H, W, C]`` (uint8 in [0, 1])."""
    if images.ndim != 4:
        raise ValueError(f"images: expected [B, H, W, C], got shape {tuple(images.shape)}")
    x = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
    b, h, w, _ = x.shape
    x = F.pad(x.permute(0, 3, 1, 2), (pad, pad, pad, pad), mode="replicate").permute(0, 2, 3, 1)
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # [B, H]
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    return x[batch, rows[:, :, None], cols[:, None, :]]


class ObservationEncoder(nn.Module):
    """``tokens float[B, V, N, D] + state float[B, S] + lang float[B, L] -> feature float[B, F]``."""

    def __init__(
        self,
        n_views: int,
        n_tokens: int,
        token_dim: int,
        state_dim: int,
        lang_dim: int,
        d_model: int = 64,
        n_queries: int = 4,
        feature_dim: int = 256,
        position: str = "learned",
        pooling: str = "attention",
        flat_dim: int = 16,
        n_keypoints: int = 16,
        waypoint_dim: int = 0,
        waypoint_input: bool = False,
        waypoint_source: str = "feature",
    ):
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"position: expected one of {POSITIONS}, got {position!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.n_views, self.n_tokens, self.d, self.k = n_views, n_tokens, d_model, n_queries
        self.position = position
        self.proj = nn.Linear(token_dim, d_model)
        self.token_norm = nn.LayerNorm(d_model)
        if position == "grid":  # no free embedding: a zero term, kept so the forward is one
            self.register_buffer("pos", torch.zeros(n_views, n_tokens, d_model))
        else:
            self.pos = nn.Parameter(torch.randn(n_views, n_tokens, d_model) * 0.02)
        if position != "learned":
            self.register_buffer("coords", grid_coordinates(n_tokens), persistent=False)
            # per view, (x, y) -> d_model; sized so the term starts comparable to a normed token
            self.coord_proj = nn.Parameter(torch.randn(n_views, 2, d_model) * 0.5)
        self.film = nn.Linear(lang_dim, 2 * n_views * d_model)
        nn.init.zeros_(self.film.weight)  # starts as the identity modulation
        nn.init.zeros_(self.film.bias)
        pooled = 0
        if pooling in ("attention", "attention_keypoints"):
            self.query = nn.Parameter(torch.randn(n_views, n_queries, d_model) * 0.02)
            self.lang_query = nn.Linear(lang_dim, n_views * n_queries * d_model)
            self.key = nn.Linear(d_model, d_model, bias=False)
            pooled += n_views * n_queries * d_model
        if pooling in ("keypoints", "attention_keypoints"):
            # spatial soft-argmax: each keypoint is a per-view softmax over the grid, read out
            # as the expected (x, y) of its tokens, so moving what it responds to moves the number
            self.register_buffer("kp_grid", grid_coordinates(n_tokens), persistent=False)
            self.kp_logits = nn.Parameter(torch.randn(n_views, d_model, n_keypoints) * 0.1)
            self.kp_log_temp = nn.Parameter(torch.zeros(n_views, 1, n_keypoints))
            pooled += n_views * n_keypoints * 2
        if pooling == "flatten":
            # every token keeps its place: a narrow per-token map, then the grid flattened
            self.flat = nn.Linear(d_model, flat_dim)
            pooled = n_views * n_tokens * flat_dim
        self.state_proj = nn.Linear(state_dim, d_model)
        self.lang_proj = nn.Linear(lang_dim, d_model)
        pooled += 2 * d_model
        self.out = nn.Sequential(
            nn.Linear(pooled, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh()
        )
        # an optional head that predicts the motion to the next gripper event, from the feature
        # or (``tokens``) from the whole token grids and the state through a network of its own;
        # with waypoint_input its prediction is appended to the feature the heads read
        if waypoint_source not in WAYPOINT_SOURCES:
            raise ValueError(
                f"waypoint_source: expected one of {WAYPOINT_SOURCES}, got {waypoint_source!r}"
            )
        self.waypoint_dim, self.waypoint_input = waypoint_dim, waypoint_input
        self.waypoint_source = waypoint_source
        if waypoint_dim > 0:
            reads = feature_dim
            if waypoint_source != "feature":
                reads = n_views * n_tokens * token_dim + state_dim
            self.waypoint_head = mlp(reads, feature_dim, waypoint_dim)
        elif waypoint_input:
            raise ValueError("waypoint_input needs a waypoint head (waypoint_dim > 0)")
        self.feature_dim = feature_dim + (waypoint_dim if waypoint_input else 0)

    def forward(
        self,
        tokens: torch.Tensor,
        state: torch.Tensor,
        lang: torch.Tensor,
        view_mask: torch.Tensor | None = None,
        waypoint_tokens: torch.Tensor | None = None,
        waypoint_state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``view_mask`` (true: present) is per view ``[B, V]`` or per token ``[B, V, N]``; a
        view with no token present counts as missing. ``waypoint_tokens`` and
        ``waypoint_state`` are what a localiser (``tokens`` or ``pretrained`` source) reads
        instead of ``tokens`` and ``state`` (training gives it inputs augmented its own way)."""
        b, v, n, _ = tokens.shape
        if self.waypoint_input and self.waypoint_source != "feature":
            # the localiser's prediction goes in detached: only its own loss trains it, so the
            # imitation loss cannot turn it into another channel for memorising layouts
            located = self.locate(
                tokens if waypoint_tokens is None else waypoint_tokens,
                state if waypoint_state is None else waypoint_state,
                view_mask,
            ).detach()
        token_mask = None
        if view_mask is not None and view_mask.dim() == 3:
            token_mask, view_mask = view_mask.bool(), view_mask.bool().any(-1)
        x = self.token_norm(self.proj(tokens.float())) + self.pos  # [B, V, N, d]
        if self.position != "learned":
            x = x + torch.einsum("nc,vcd->vnd", self.coords, self.coord_proj)
        gamma, beta = self.film(lang).view(b, 2, v, 1, self.d).unbind(1)
        x = F.relu(x * (1.0 + gamma) + beta)
        if token_mask is not None:  # masked tokens carry nothing; attention also skips them
            x = x * token_mask.unsqueeze(-1).float()
        pooled = []
        if self.pooling in ("attention", "attention_keypoints"):
            q = self.query + self.lang_query(lang).view(b, v, self.k, self.d)  # [B, V, K, d]
            # q . (W x) = (W^T q) . x: project the K queries instead of all N tokens.
            attn = torch.einsum("bvkd,bvnd->bvkn", q @ self.key.weight, x) / math.sqrt(self.d)
            if token_mask is not None:  # a view with none present keeps its (zeroed) tokens
                present = token_mask | ~token_mask.any(-1, keepdim=True)
                attn = attn.masked_fill(~present.unsqueeze(2), float("-inf"))
            pooled.append(torch.einsum("bvkn,bvnd->bvkd", attn.softmax(-1), x))  # [B, V, K, d]
        if self.pooling in ("keypoints", "attention_keypoints"):
            pooled.append(self.keypoints(x))
        if self.pooling == "flatten":
            pooled.append(self.flat(x))  # [B, V, N, flat_dim]
        if view_mask is not None:  # a missing view contributes nothing
            pooled = [p * view_mask.view(b, v, 1, 1).float() for p in pooled]
        parts = [p.reshape(b, -1) for p in pooled] + [self.state_proj(state), self.lang_proj(lang)]
        feature = self.out(torch.cat(parts, dim=-1))
        if self.waypoint_input:
            if self.waypoint_source != "feature":
                feature = torch.cat([feature, located], dim=-1)
            else:
                feature = torch.cat([feature, self.waypoint_head(feature)], dim=-1)
        return feature

    def locate(
        self, tokens: torch.Tensor, state: torch.Tensor, view_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """A localiser's (``tokens`` or ``pretrained`` source) prediction from the token grids
        ``[B, V, N, D]`` (masked tokens and views zeroed) and the state."""
        x = tokens.float()
        if view_mask is not None:
            mask = view_mask.bool()
            mask = mask.unsqueeze(-1) if mask.dim() == 3 else mask[:, :, None, None]
            x = x * mask.float()
        return self.waypoint_head(torch.cat([x.flatten(1), state.float()], dim=-1))

    def waypoint(
        self,
        feature: torch.Tensor,
        tokens: torch.Tensor | None = None,
        state: torch.Tensor | None = None,
        view_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The waypoint head's prediction, with gradients, for a feature this encoder returned
        (a ``tokens``-source head reads ``tokens`` and ``state`` instead)."""
        if self.waypoint_dim == 0:
            raise RuntimeError("this encoder has no waypoint head")
        if self.waypoint_source != "feature":
            if tokens is None or state is None:
                raise ValueError("a localiser waypoint head needs the tokens and the state")
            return self.locate(tokens, state, view_mask)
        if self.waypoint_input:
            return feature[..., -self.waypoint_dim :]
        return self.waypoint_head(feature)

    def keypoints(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial soft-argmax of the embedded tokens ``x`` (``[B, V, N, d]``): the expected grid
        (x, y) in [-1, 1] of each keypoint's softmax over the tokens, ``[B, V, K, 2]``."""
        logits = torch.einsum("bvnd,vdk->bvnk", x, self.kp_logits) * self.kp_log_temp.exp()
        return torch.einsum("bvnk,nc->bvkc", logits.softmax(dim=2), self.kp_grid)


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2) -> nn.Sequential:
    """LayerNorm-ReLU MLP (stable for off-policy learning with high update ratios)."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.ReLU()]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


class TanhGaussianActor(nn.Module):
    """Feature -> a squashed Gaussian over ``chunk_len x action_dim`` actions in ``[-1, 1]``.

    ``skip_dim`` > 0: the feature's last ``skip_dim`` numbers (a localiser's offset) also reach
    the pre-squash mean through a linear map of their own, which starts as the identity from
    their first ``skip_identity`` numbers to the chunk's first action's first components (and
    zero elsewhere); the network adds to it."""

    skip_dim = 0

    def __init__(
        self,
        feature_dim: int,
        action_dim: int,
        chunk_len: int = 1,
        hidden: int = 256,
        skip_dim: int = 0,
        skip_identity: int = 0,
    ):
        super().__init__()
        self.action_dim, self.chunk_len = action_dim, chunk_len
        self.net = mlp(feature_dim, hidden, 2 * action_dim * chunk_len)
        self.skip_dim = skip_dim
        if skip_dim:
            if not 0 <= skip_identity <= min(skip_dim, action_dim):
                raise ValueError(
                    f"skip_identity: expected 0 .. {min(skip_dim, action_dim)}, got {skip_identity}"
                )
            self.skip = nn.Linear(skip_dim, action_dim * chunk_len, bias=False)
            with torch.no_grad():
                self.skip.weight.zero_()
                idx = torch.arange(skip_identity)
                self.skip.weight[idx, idx] = 1.0

    def distribution(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-squash mean and standard deviation, ``[B, chunk_len * action_dim]`` each."""
        mean, log_std = self.net(feature).chunk(2, dim=-1)
        if self.skip_dim:
            mean = mean + self.skip(feature[..., -self.skip_dim :])
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1.0)
        return mean, log_std.exp()

    def forward(
        self,
        feature: torch.Tensor,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A flattened action ``[B, chunk_len * action_dim]`` in [-1, 1] and its log-probability ``[B]``.

        ``generator`` makes the sampling noise reproducible (and checkpointable) by its owner;
        ``noise`` (standard normal, ``[B, chunk_len * action_dim]``) is used instead when given.
        """
        mean, std = self.distribution(feature)
        if deterministic:
            return torch.tanh(mean), torch.zeros(mean.shape[0], device=mean.device)
        if noise is None:
            # drawn where the generator lives (a CPU generator cannot fill a CUDA tensor)
            where = generator.device if generator is not None else mean.device
            noise = torch.randn(mean.shape, generator=generator, device=where, dtype=mean.dtype)
        elif noise.shape != mean.shape:
            raise ValueError(f"noise: expected shape {tuple(mean.shape)}, got {tuple(noise.shape)}")
        u = mean + std * noise.to(mean.device)
        return torch.tanh(u), squashed_log_prob(u, mean, std)

    def log_prob(
        self, feature: torch.Tensor, action: torch.Tensor, eps: float = 1e-4
    ) -> torch.Tensor:
        """Log-probability ``[B]`` of given actions in [-1, 1] (clamped off the boundary)."""
        mean, std = self.distribution(feature)
        a = action.clamp(-1.0 + eps, 1.0 - eps)
        return squashed_log_prob(torch.atanh(a), mean, std)

    @property
    def noise_dim(self) -> int:
        """Standard normal numbers one sampled action takes (``forward``'s ``noise`` width)."""
        return self.action_dim * self.chunk_len

    def imitation(
        self,
        feature: torch.Tensor,
        action: torch.Tensor,
        mask: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The behaviour-cloning loss on ``action`` (``[B, chunk_len * action_dim]``, the
        human's) and the exploration standard deviations the ``bc_std`` anchor regresses.

        Here: the squared error of the deterministic action (the squashed mean)."""
        mean, std = self.distribution(feature)
        return bc_loss(torch.tanh(mean), action, mask, weights), std


class MixtureTanhGaussianActor(TanhGaussianActor):
    """Feature -> a mixture of ``components`` squashed Gaussians over the whole action chunk.

    Imitation fits the mixture's density to the human actions (each component a diagonal
    Gaussian around its squashed mean, with widths of its own), so where similar observations
    were followed by different actions (a demonstration, a copied success and a watcher's
    correction of nearby states) the components keep them apart instead of averaging them
    into a motion no one made. Acting picks a component (the most probable one when
    deterministic) and samples around its mean with the exploration standard deviation,
    which the ``bc_std`` anchor holds as for the single Gaussian.
    """

    def __init__(
        self,
        feature_dim: int,
        action_dim: int,
        chunk_len: int = 1,
        hidden: int = 256,
        components: int = 4,
    ):
        nn.Module.__init__(self)
        if components < 2:
            raise ValueError(f"components: a mixture needs 2 or more, got {components}")
        self.action_dim, self.chunk_len, self.k = action_dim, chunk_len, components
        size = action_dim * chunk_len
        # per component: mean, exploration log-std, imitation log-width; then the K logits
        self.net = mlp(feature_dim, hidden, components * (3 * size + 1))

    @property
    def noise_dim(self) -> int:
        """The action's standard normal numbers, plus one that picks the component."""
        return self.action_dim * self.chunk_len + 1

    def components(
        self, feature: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pre-squash means, exploration stds, imitation widths (``[B, K, A]`` each, ``A`` the
        flattened chunk) and component log-weights ``[B, K]``."""
        b, size = feature.shape[0], self.action_dim * self.chunk_len
        out = self.net(feature)
        logits = out[:, : self.k]
        mean, log_std, log_width = out[:, self.k :].view(b, self.k, 3, size).unbind(2)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1.0)
        lo, hi = MIXTURE_LOG_WIDTH
        log_width = lo + 0.5 * (hi - lo) * (torch.tanh(log_width) + 1.0)
        return mean, log_std.exp(), log_width.exp(), logits.log_softmax(-1)

    def distribution(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The most probable component's pre-squash mean and standard deviation, ``[B, A]``."""
        mean, std, _, log_w = self.components(feature)
        return self._pick(mean, log_w.argmax(-1)), self._pick(std, log_w.argmax(-1))

    @staticmethod
    def _pick(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Row ``b``'s component ``k[b]`` of ``x`` ``[B, K, A]`` (a gather, so graphs export)."""
        return x.gather(1, k.view(-1, 1, 1).expand(-1, 1, x.shape[-1])).squeeze(1)

    def forward(
        self,
        feature: torch.Tensor,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As the single Gaussian's; ``noise`` is ``[B, A + 1]``: its last column, through the
        normal CDF, picks the component in proportion to its weight."""
        mean, std, _, log_w = self.components(feature)
        if deterministic:
            picked = self._pick(mean, log_w.argmax(-1))
            return torch.tanh(picked), torch.zeros(mean.shape[0], device=mean.device)
        shape = (mean.shape[0], self.noise_dim)
        if noise is None:
            where = generator.device if generator is not None else mean.device
            noise = torch.randn(shape, generator=generator, device=where, dtype=mean.dtype)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise: expected shape {shape}, got {tuple(noise.shape)}")
        noise = noise.to(mean.device)
        # inverse-CDF draw of the component from one normal number
        uniform = 0.5 * (1.0 + torch.erf(noise[:, -1:] / math.sqrt(2.0)))
        k = (log_w.exp().cumsum(-1) < uniform).sum(-1).clamp(max=self.k - 1)
        u = self._pick(mean, k) + self._pick(std, k) * noise[:, :-1]
        return torch.tanh(u), self._log_prob_u(u, mean, std, log_w)

    def _log_prob_u(
        self, u: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, log_w: torch.Tensor
    ) -> torch.Tensor:
        """log pi(tanh(u)) under the mixture of the exploration Gaussians."""
        u_k = u.unsqueeze(1)
        gauss = -0.5 * ((u_k - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)
        jac = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
        return torch.logsumexp(log_w + gauss.sum(-1), dim=-1) - jac.sum(-1)

    def log_prob(
        self, feature: torch.Tensor, action: torch.Tensor, eps: float = 1e-4
    ) -> torch.Tensor:
        mean, std, _, log_w = self.components(feature)
        u = torch.atanh(action.clamp(-1.0 + eps, 1.0 - eps))
        return self._log_prob_u(u, mean, std, log_w)

    def imitation(
        self,
        feature: torch.Tensor,
        action: torch.Tensor,
        mask: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixture's negative log-likelihood of the human actions (each component a diagonal
        Gaussian of its own widths around its squashed mean; ``weights`` scale each component
        of the action's log-density), and every component's exploration stds."""
        mean, std, width, log_w = self.components(feature)
        nll = mixture_nll(torch.tanh(mean), width, log_w, action, weights)
        if mask is None:
            return nll.mean(), std
        mask = mask.float()
        return (nll * mask).sum() / mask.sum().clamp_min(1.0), std


MIXTURE_LOG_WIDTH = (math.log(0.02), math.log(1.0))
"""Range of a mixture component's imitation width (normalised action units): the lower bound
keeps a component from collapsing onto one recorded action."""


def mixture_nll(
    means: torch.Tensor,
    widths: torch.Tensor,
    log_weights: torch.Tensor,
    action: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``-log sum_k w_k N(action; means_k, widths_k^2)`` per row, ``[B]``: ``means`` and
    ``widths`` are ``[B, K, A]``, ``log_weights`` ``[B, K]``, ``action`` ``[B, A]``; ``weights``
    (``[A]``) scale each component's log-density term."""
    z = (action.unsqueeze(1) - means) / widths
    per_dim = -0.5 * z**2 - torch.log(widths) - 0.5 * math.log(2 * math.pi)
    if weights is not None:
        per_dim = per_dim * weights
    return -torch.logsumexp(log_weights + per_dim.sum(-1), dim=-1)


def squashed_log_prob(u: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log pi(tanh(u)) for u ~ N(mean, std): the Gaussian density with the tanh change of variables."""
    gauss = -0.5 * ((u - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)
    # log(1 - tanh(u)^2), written stably: 2 * (log 2 - u - softplus(-2u))
    jac = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
    return (gauss - jac).sum(-1)


class QEnsemble(nn.Module):
    """``E`` independent LayerNorm Q-MLPs evaluated as one batched module: ``[E, B]`` values."""

    def __init__(self, feature_dim: int, action_dim: int, n_heads: int = 4, hidden: int = 256):
        super().__init__()
        self.n_heads = n_heads
        dims = [feature_dim + action_dim, hidden, hidden]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.norms = nn.ModuleList()
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            self.weights.append(nn.Parameter(_ensemble_init(n_heads, d_in, d_out)))
            self.biases.append(nn.Parameter(torch.zeros(n_heads, 1, d_out)))
            self.norms.append(
                nn.LayerNorm(d_out, elementwise_affine=False)
            )  # no parameters shared across heads
        self.w_out = nn.Parameter(_ensemble_init(n_heads, hidden, 1))
        self.b_out = nn.Parameter(torch.zeros(n_heads, 1, 1))

    def forward(self, feature: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([feature, action], dim=-1).unsqueeze(0).expand(self.n_heads, -1, -1)
        for w, b, norm in zip(self.weights, self.biases, self.norms, strict=True):
            x = F.relu(norm(torch.baddbmm(b, x, w)))
        return torch.baddbmm(self.b_out, x, self.w_out).squeeze(-1)


def _ensemble_init(n: int, d_in: int, d_out: int) -> torch.Tensor:
    w = torch.empty(n, d_in, d_out)
    for i in range(n):
        nn.init.kaiming_uniform_(w[i].T, a=math.sqrt(5))  # nn.Linear's default, per head
    return w
