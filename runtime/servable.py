"""What a model must offer to be served: the servable policy and critic interfaces.

A **servable policy** is a ``torch.nn.Module`` with attributes ``views`` (tuple of view
names), ``image_hw`` ((height, width)), ``state_dim``, ``action_dim``, ``chunk_len`` and
``lang_dim``, whose ``forward(images, state, lang)`` maps ``uint8[B, V, H, W, 3]`` frames
(views in ``views`` order), ``float32[B, state_dim]`` state and ``float32[B, lang_dim]``
instruction embeddings to a deterministic ``float32[B, chunk_len, action_dim]`` action chunk.

A **servable critic** has ``views``, ``image_hw`` and ``lang_dim``; its
``forward(images_a, images_b, lang)`` returns ``(progress float32[B] in [-1, 1],
done_prob float32[B] in [0, 1])`` for the step from ``a`` to ``b``.

Instructions become ``lang`` through an :class:`InstructionEncoder`, cached per instruction.
This module needs no torch, so clients and tools can read specs without it.
"""

from __future__ import annotations

import hashlib
import importlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from limbic.contracts import ContractError
from limbic.runtime.protocol import CriticSpec, PolicySpec


class ServableError(TypeError):
    """A model does not implement the servable interface; the message names the attribute."""


def _attr(module: Any, name: str, what: str) -> Any:
    if not hasattr(module, name):
        raise ServableError(
            f"{type(module).__name__} is not a servable {what}: missing attribute {name!r}"
        )
    return getattr(module, name)


def _positive(module: Any, name: str, what: str, minimum: int = 1) -> int:
    value = _attr(module, name, what)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ServableError(
            f"{type(module).__name__}.{name} must be an integer >= {minimum}, got {value!r}"
        )
    return int(value)


def _views_hw(module: Any, what: str) -> tuple[tuple[str, ...], tuple[int, int]]:
    views = tuple(_attr(module, "views", what))
    if (
        not views
        or not all(isinstance(v, str) and v for v in views)
        or len(set(views)) != len(views)
    ):
        raise ServableError(
            f"{type(module).__name__}.views must be distinct non-empty names, got {views!r}"
        )
    hw = tuple(int(n) for n in _attr(module, "image_hw", what))
    if len(hw) != 2 or min(hw) < 1:
        raise ServableError(f"{type(module).__name__}.image_hw must be (height, width), got {hw!r}")
    return views, (hw[0], hw[1])


def policy_spec(module: Any) -> PolicySpec:
    """Read the :class:`PolicySpec` of a servable policy module; raise naming what is missing."""
    views, hw = _views_hw(module, "policy")
    return PolicySpec(
        views=views,
        image_hw=hw,
        state_dim=_positive(module, "state_dim", "policy", minimum=0),
        action_dim=_positive(module, "action_dim", "policy"),
        chunk_len=_positive(module, "chunk_len", "policy"),
        lang_dim=_positive(module, "lang_dim", "policy"),
    )


def critic_spec(module: Any) -> CriticSpec:
    """Read the :class:`CriticSpec` of a servable critic module; raise naming what is missing."""
    views, hw = _views_hw(module, "critic")
    return CriticSpec(views=views, image_hw=hw, lang_dim=_positive(module, "lang_dim", "critic"))


@runtime_checkable
class InstructionEncoder(Protocol):
    """Turns instruction strings into ``float32[N, dim]`` embeddings (the ``lang`` input)."""

    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed each text; deterministic for a given text."""
        ...


def normalise_instruction(text: str) -> str:
    """Case- and whitespace-insensitive form, so "Pick the cube" and "pick  the cube" match."""
    return " ".join(text.lower().split())


class HashInstructionEncoder:
    """A deterministic unit-norm embedding seeded by the SHA-256 of the normalised text.

    Stands in for the frozen sentence encoder until the policy issue lands one: same text,
    same vector, in every process; different texts are nearly orthogonal.
    """

    def __init__(self, dim: int = 32):
        if dim < 1:
            raise ContractError("dim", f"expected a positive embedding size, got {dim}")
        self.dim = int(dim)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed each text as ``float32[dim]``."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = hashlib.sha256(normalise_instruction(text).encode()).digest()
            vec = np.random.default_rng(np.frombuffer(seed, dtype=np.uint64)).standard_normal(
                self.dim
            )
            out[i] = vec / np.linalg.norm(vec)
        return out


class CachedInstructionEncoder:
    """Wraps an encoder with a bounded least-recently-used cache keyed by the normalised text."""

    def __init__(self, encoder: InstructionEncoder, max_entries: int = 4096):
        self.encoder = encoder
        self.dim = encoder.dim
        self.max_entries = max_entries
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.misses = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed each text, calling the wrapped encoder once for all texts not yet cached."""
        keys = [normalise_instruction(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if missing:
            self.misses += len(missing)
            fresh = np.asarray(self.encoder.encode(missing), dtype=np.float32)
            if fresh.shape != (len(missing), self.dim) or not np.isfinite(fresh).all():
                raise ServableError(
                    f"{type(self.encoder).__name__}.encode returned {fresh.shape}, expected finite "
                    f"({len(missing)}, {self.dim})"
                )
            for key, vec in zip(missing, fresh, strict=True):
                self._cache[key] = vec
        out = np.stack([self._cache[k] for k in keys])
        for key in keys:
            self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return out


def load_object(target: str) -> Any:
    """Import ``"package.module:Name"`` and return ``Name`` (how configs name a model class)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ContractError("target", f"expected 'package.module:Name', got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ContractError(
            "target", f"cannot import {module_name!r} for {target!r}: {e}"
        ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ContractError("target", f"{module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj
