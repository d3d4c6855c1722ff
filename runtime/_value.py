"""Value along an episode window from pairwise progress (private stand-in for ``critic/value.py``).

The serving side needs the DESIGN.md rule now; the critic issue owns the real implementation
and this module goes away when it lands. Estimates, each in ``[0, 1]``:

* incremental: ``Φ_t = Φ_{t-1} + c(o_{t-1}, o_t)·(1 − Φ_{t-1})`` for ``c ≥ 0``,
  ``Φ_{t-1}·(1 + c)`` for ``c < 0``, chained from ``Φ_0 = phi0``;
* forward: the same rule applied once from ``phi0`` with ``c(o_0, o_t)``;
* backward (with a goal frame): ``1 + c(o_goal, o_t)``;

fused with equal weights.
"""

from __future__ import annotations

import numpy as np


def inverse_progress(phi_prev: np.ndarray | float, c: np.ndarray | float) -> np.ndarray:
    """The value after a step of signed progress ``c`` from value ``phi_prev``."""
    phi_prev, c = np.asarray(phi_prev, dtype=np.float64), np.asarray(c, dtype=np.float64)
    return np.where(c >= 0, phi_prev + c * (1.0 - phi_prev), phi_prev * (1.0 + c))


def fused_value(
    incremental_c: np.ndarray,
    forward_c: np.ndarray,
    backward_c: np.ndarray | None = None,
    phi0: float = 0.0,
) -> np.ndarray:
    """``float32[N - 1]`` values of frames ``1..N-1`` of a window from its critic outputs.

    ``incremental_c[i] = c(o_i, o_{i+1})``, ``forward_c[i] = c(o_0, o_{i+1})`` and
    ``backward_c[i] = c(o_goal, o_{i+1})``.
    """
    incremental_c = np.asarray(incremental_c, dtype=np.float64)
    chain = np.empty_like(incremental_c)
    phi = float(phi0)
    for i, c in enumerate(incremental_c):
        phi = float(inverse_progress(phi, c))
        chain[i] = phi
    estimates = [chain, inverse_progress(phi0, forward_c)]
    if backward_c is not None:
        estimates.append(1.0 + np.asarray(backward_c, dtype=np.float64))
    return np.clip(np.mean(estimates, axis=0), 0.0, 1.0).astype(np.float32)
