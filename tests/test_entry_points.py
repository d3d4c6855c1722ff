"""Every console script is installed and composes its Hydra config from the installed package."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
COMPOSED = {
    "limbic-serve": "serve",
    "limbic-export": "export",
    "limbic-actor": "actor",
    "limbic-learner": "learner",
}  # own argv handling, compose() inside
HYDRA_SCRIPTS = [name for name in SCRIPTS if name != "limbic-bench" and name not in COMPOSED]


def script_path(name: str) -> str:
    path = Path(sys.executable).parent / name
    assert path.exists(), (
        f"{name} is not installed next to {sys.executable}; reinstall with pip install -e ."
    )
    return str(path)


@pytest.mark.parametrize("name", HYDRA_SCRIPTS)
def test_console_script_composes_its_config(name, tmp_path):
    res = subprocess.run(
        [script_path(name), "--cfg", "job"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MUJOCO_GL": "egl"},
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip(), "printed no config"


def test_bench_script_lists_benchmarks(tmp_path):
    res = subprocess.run(
        [script_path("limbic-bench"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and "sim" in res.stdout and "wire" in res.stdout


@pytest.mark.parametrize("name", sorted(COMPOSED))
def test_composed_scripts_answer_help_and_compose_defaults(name, tmp_path):
    res = subprocess.run(
        [script_path(name), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    from limbic.launch.compose import compose
    from limbic.runtime.actor import ActorConfig
    from limbic.runtime.learner import LearnerConfig
    from limbic.runtime.onnx_export import ExportConfig
    from limbic.runtime.server import ServeConfig

    schema = {
        "serve": ServeConfig,
        "export": ExportConfig,
        "actor": ActorConfig,
        "learner": LearnerConfig,
    }[COMPOSED[name]]
    assert isinstance(compose(COMPOSED[name], [], schema), schema)
