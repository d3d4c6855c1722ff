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
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = (getattr(e, "msg", None) or str(e)).splitlines()[0]
        raise ConfigError(str(key), msg) from None
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except ConfigError as e:
        # A nested dataclass names its key locally ("sim.arm"); report the full path.
        full = _qualify(e.key, merged)
        raise ConfigError(full, str(e).split(": ", 1)[1]) from None
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = (getattr(e, "msg", None) or str(e)).splitlines()[0]
        raise ConfigError(str(key), msg) from None


def _qualify(key: str, cfg: DictConfig) -> str:
    """The unique full key of ``cfg`` that ends with ``key`` (``key`` itself when not unique)."""
    matches: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, DictConfig):
            for k in node.keys():
                path = f"{prefix}.{k}" if prefix else str(k)
                if path == key or path.endswith("." + key):
                    matches.append(path)
                walk(node._get_node(k), path)

    walk(cfg, "")
    return matches[0] if len(matches) == 1 else key
