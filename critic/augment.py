"""Training-time augmentation of the critic's inputs that runs on cached frame tokens.

Two kinds, both off by default and both measured in ``critic/README.md``:

* **Instruction perturbation** (:class:`InstructionAugConfig`). The recordings use a few
  phrasings per task, and the held-out split phrases its instructions in ways training never
  saw; a critic that keys on one word of a phrasing (a preposition, a verb) reads a new
  phrasing as another task. Each training instruction gets ``variants`` perturbed copies,
  made once at start by the generic text edits of "easy data augmentation": words deleted,
  two words swapped, a word of another training instruction inserted. A pair then uses a
  random copy instead of the original with probability ``p``. The copies are embedded once,
  like every instruction, so a step costs nothing more. The labels stay those of the
  original instruction, so the critic learns to read an instruction from all of its words.
* **Token shift** (:func:`shift_tokens`). A frozen backbone's tokens lie on a grid (8 × 8 per
  128-pixel view at stride 16), so moving every token of a frame by whole cells is the image
  moved by whole strides, with the uncovered cells taken from the nearest edge cell. Both
  frames of a pair move by the same offset (their change is what the pair head reads);
  ``shift_views`` names the views to move (a wrist camera moves with the arm, so the scene
  does not shift in it the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from limbic.launch.config import require


@dataclass
class InstructionAugConfig:
    """Perturbed copies of the training instructions (see the module docstring)."""

    p: float = 0.0
    """Probability that a pair uses a perturbed copy of its instruction (0: off)."""
    variants: int = 8
    """Perturbed copies made per training instruction."""
    delete: float = 0.1
    """Probability of deleting each word (at least two words are kept)."""
    swap: float = 0.1
    """Probability of swapping two random words of a copy."""
    insert: float = 0.15
    """Probability of inserting one word taken from another training instruction."""
    seed: int = 0
    """Seed of the copies."""

    def __post_init__(self) -> None:
        require(0.0 <= self.p <= 1.0, "critic.lang_aug.p", f"expected [0, 1], got {self.p}")
        require(
            self.variants >= 1, "critic.lang_aug.variants", f"expected >= 1, got {self.variants}"
        )
        for name in ("delete", "swap", "insert"):
            value = getattr(self, name)
            require(0.0 <= value < 1.0, f"critic.lang_aug.{name}", f"expected [0, 1), got {value}")


def perturb_instruction(
    text: str, vocabulary: list[str], rng: np.random.Generator, config: InstructionAugConfig
) -> str:
    """One perturbed copy of ``text``: words deleted, swapped, one inserted from ``vocabulary``."""
    words = text.split()
    if len(words) > 2:
        keep = rng.random(len(words)) >= config.delete
        if keep.sum() < 2:
            keep[rng.choice(len(words), size=2, replace=False)] = True
        words = [w for w, k in zip(words, keep, strict=True) if k]
    if len(words) >= 2 and rng.random() < config.swap:
        i, j = rng.choice(len(words), size=2, replace=False)
        words[i], words[j] = words[j], words[i]
    if vocabulary and rng.random() < config.insert:
        words.insert(
            int(rng.integers(len(words) + 1)), vocabulary[int(rng.integers(len(vocabulary)))]
        )
    return " ".join(words)


class InstructionVariants:
    """The training instructions followed by their perturbed copies, as one list to embed, and
    the draw that swaps a batch's instruction indices for copies.

    ``texts[:n]`` are the original instructions (indices unchanged); copies of instruction ``i``
    are ``texts[n + i * variants : n + (i + 1) * variants]``. A copy equal to its original (a
    perturbation that changed nothing) stays in the list; it only lowers the effective ``p``.
    """

    def __init__(self, instructions: list[str], config: InstructionAugConfig):
        self.config = config
        self.n = len(instructions)
        self.texts = list(instructions)
        if config.p <= 0:
            return
        rng = np.random.default_rng([config.seed, 0x1A76])
        words = {w for t in instructions for w in t.split()}
        for text in instructions:
            vocabulary = sorted(words - set(text.split()))
            self.texts += [
                perturb_instruction(text, vocabulary, rng, config) for _ in range(config.variants)
            ]

    def draw(self, index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``index`` (into the originals) with each entry replaced by a random copy with probability ``p``."""
        index = np.asarray(index, dtype=np.int64)
        if self.config.p <= 0:
            return index
        use = rng.random(index.shape) < self.config.p
        copy = (
            self.n
            + index * self.config.variants
            + rng.integers(self.config.variants, size=index.shape)
        )
        return np.where(use, copy, index)


def shift_tokens(
    tokens: torch.Tensor, grid_hw: tuple[int, int], dy: np.ndarray, dx: np.ndarray, views: list[int]
) -> torch.Tensor:
    """Tokens ``[B, V, N, C]`` (``N = H × W`` in row-major order) of ``views`` moved by ``(dy, dx)``
    grid cells per sample (``dy``, ``dx``: int ``[B]``); uncovered cells repeat the edge cell."""
    h, w = grid_hw
    b, v, n, c = tokens.shape
    if n != h * w:
        raise ValueError(f"tokens: {n} per view is not a {h}x{w} grid")
    rows = (torch.arange(h)[None, :] - torch.as_tensor(dy)[:, None]).clamp(0, h - 1)  # [B, H]
    cols = (torch.arange(w)[None, :] - torch.as_tensor(dx)[:, None]).clamp(0, w - 1)  # [B, W]
    src = (rows[:, :, None] * w + cols[:, None, :]).reshape(b, n).to(tokens.device)  # [B, N]
    out = tokens.clone()
    for k in views:
        out[:, k] = torch.gather(tokens[:, k], 1, src[:, :, None].expand(b, n, c))
    return out


def token_grid(image_hw: tuple[int, int], num_tokens: int) -> tuple[int, int]:
    """The ``(rows, cols)`` grid of ``num_tokens`` tokens over a ``image_hw`` frame (one square
    stride); an error when the tokens are not such a grid (e.g. a class token)."""
    h, w = image_hw
    stride = (h * w / num_tokens) ** 0.5
    rows, cols = round(h / stride), round(w / stride)
    if rows * cols != num_tokens:
        raise ValueError(
            f"critic.token_shift: {num_tokens} tokens per {h}x{w} view are not a grid of one "
            "stride; this backbone's tokens cannot be shifted (set critic.token_shift=0)"
        )
    return rows, cols
