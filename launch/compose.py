"""Compose a Hydra config from ``launch/conf`` and command-line overrides into a typed dataclass.

Entry points use Hydra's compose API rather than ``@hydra.main``: a server or an export has
no use for a run folder, and subcommands (``limbic-serve keygen``) stay plain argparse.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf

from limbic.launch.config import ConfigError, to_object

T = TypeVar("T")

CONF_DIR = Path(__file__).resolve().parent / "conf"


def compose(config_name: str, overrides: list[str], schema: type[T]) -> T:
    """``launch/conf/<config_name>.yaml`` with ``key=value`` overrides, checked against ``schema``."""
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except HydraException as e:
        raise ConfigError("overrides", str(e).splitlines()[0]) from None
    return to_object(cfg, schema)


def show(config_name: str, overrides: list[str]) -> str:
    """The composed config as YAML (for ``--help``)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_yaml(hydra_compose(config_name=config_name, overrides=list(overrides)))
