"""Typed configs behind the Hydra YAML.

Every entry point registers a dataclass schema with Hydra's ConfigStore; the YAML under
``launch/conf`` fills it. OmegaConf checks types against the dataclass, and the dataclasses'
``__post_init__`` checks values, so a bad config fails before anything starts, with the full
key of the bad field in the message.
"""

from __future__ import annotations

from dataclasses import is_dataclass
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, of the wrong type, or out of range; the message names the key."""

    def __init__(self, key: str, problem: str):
        self.key = key
        super().__init__(f"config {key}: {problem}")


def require(condition: bool, key: str, problem: str) -> None:
    """Raise :class:`ConfigError` for ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(key, problem)


def to_object(cfg: DictConfig | dict[str, Any], schema: type[T]) -> T:
    """Merge ``cfg`` onto the dataclass ``schema`` and return a validated instance.

    Raises :class:`ConfigError` naming the full key on unknown keys, wrong types and values
    rejected by a ``__post_init__``.
    """
    if not is_dataclass(schema):
        raise TypeError(f"{schema!r} is not a dataclass")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = (getattr(e, "msg", None) or str(e)).splitlines()[0]
        raise ConfigError(str(key), msg) from None
