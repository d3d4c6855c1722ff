"""The critic's potential Φ, computed step by step while an episode runs.

Each new frame is embedded once (cached tokens in, a language-conditioned embedding out) and
scored against the previous frame (the incremental estimate) and the episode's first frame
(the forward estimate); the two are fused with equal weights, as DESIGN.md describes. The
backward estimate needs a goal frame of the same instruction, which an online episode does
not have, so it is left out here (the offline evaluation uses it).
"""

from __future__ import annotations

import numpy as np
import torch

from limbic.critic.labels import apply_hop
from limbic.critic.model import ProgressCritic


class OnlinePotential:
    """Φ(o_t) and the done probability for a running episode, one frame at a time."""

    def __init__(self, critic: ProgressCritic):
        self.critic = critic.eval()
        self._lang_d: torch.Tensor | None = None
        self._z0 = self._z_prev = None
        self._phi_inc = 0.0

    @torch.no_grad()
    def start(self, tokens: torch.Tensor, lang: torch.Tensor) -> tuple[float, float]:
        """First frame's critic tokens ``[1, V, N, C]`` and instruction ``[1, L]`` -> ``(Φ_0, done_0)``."""
        self._lang_d = self.critic.embed_lang(lang)
        self._z0 = self._z_prev = self.critic.embed_frame(tokens, self._lang_d)
        self._phi_inc = 0.0
        done = torch.sigmoid(self.critic.done_head(self._z0, self._lang_d))
        return 0.0, float(done)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> tuple[float, float]:
        """The next frame's tokens -> ``(Φ_t, done_t)``."""
        if self._lang_d is None:
            raise RuntimeError("call start() with the episode's first frame first")
        z = self.critic.embed_frame(tokens, self._lang_d)
        pair = self.critic.pair_head(
            torch.cat([self._z_prev, self._z0]), torch.cat([z, z]), self._lang_d.expand(2, -1)
        )
        c_inc, c_fwd = (float(x) for x in pair)
        self._phi_inc = float(np.clip(apply_hop(self._phi_inc, c_inc), 0.0, 1.0))
        phi_fwd = float(np.clip(apply_hop(0.0, c_fwd), 0.0, 1.0))
        self._z_prev = z
        done = torch.sigmoid(self.critic.done_head(z, self._lang_d))
        return 0.5 * (self._phi_inc + phi_fwd), float(done)
