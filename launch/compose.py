"""Compose a Hydra config from ``launch/conf`` and command-line overrides into a typed dataclass.

Entry points use Hydra's compose API rather than ``@hydra.main``: a server or an export has
no use for a run folder, and subcommands (``limbic-serve keygen``) stay plain argparse.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

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


def load_or_compose(config_name: str, argv: list[str], schema: type[T]) -> T:
    """``--config FILE [key=value ...]`` (a config file, e.g. one ``limbic-train`` wrote for its
    child processes) or else ``launch/conf/<config_name>.yaml`` with overrides; checked against
    ``schema``. YAML only (no code runs); the file's keys must all be in the schema."""
    if argv[:1] != ["--config"]:
        return compose(config_name, argv, schema)
    if len(argv) < 2:
        raise ConfigError("--config", "expected a file after --config")
    path = Path(argv[1])
    if not path.is_file():
        raise ConfigError("--config", f"{path} is not a file")
    try:
        cfg = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(argv[2:])))
    except OmegaConfBaseException as e:
        raise ConfigError("--config", f"{path}: {str(e).splitlines()[0]}") from None
    return to_object(cfg, schema)


def write_config(cfg: Any, path: str | Path) -> Path:
    """Write a config dataclass as YAML that :func:`load_or_compose` reads back."""
    if not is_dataclass(cfg):
        raise TypeError(f"{cfg!r} is not a dataclass")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return path


def stop_event_on_signals() -> threading.Event:
    """An event set by the first SIGINT or SIGTERM (a second one interrupts at once).

    Long-running processes check it between steps and shut down cleanly.
    """
    stop = threading.Event()

    def request(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, request)
    return stop
