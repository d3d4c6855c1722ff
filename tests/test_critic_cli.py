"""limbic-train-critic and limbic-eval-critic end to end on a LeRobotDataset written to disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic_episodes import make_episodes, write_dataset


def _run(module: str, *overrides: str, cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_train_then_eval_from_dataset_folders(tmp_path: Path) -> None:
    episodes = make_episodes(6, seed=0, hw=32, fail_fraction=0.34)
    write_dataset(
        episodes, tmp_path / "toy", splits={"train": "0:4", "test": "4:6"}, with_progress=True
    )
    common = [f"hydra.run.dir={tmp_path / 'hydra'}"]
    out = _run(
        "limbic.launch.train_critic",
        f"datasets=[{tmp_path / 'toy'}]",
        "split=train",
        f"val_datasets=[{tmp_path / 'toy'}]",
        "val_split=test",
        "critic=small_cnn",
        "critic.model.image_hw=[32,32]",
        "critic.model.d_model=32",
        "critic.steps=6",
        "critic.batch_size=8",
        "critic.eval_every=3",
        f"critic.out_dir={tmp_path / 'run'}",
        "critic.progress_bar=false",
        *common,
        cwd=tmp_path,
    )
    assert "training on 4 episodes" in out and "validation: voc=" in out
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    assert checkpoint.exists() and f"best={tmp_path / 'run' / 'checkpoints' / 'best.pt'}" in out
    out = _run(
        "limbic.launch.eval_critic",
        f"checkpoint={checkpoint}",
        f"datasets=[{tmp_path / 'toy'}]",
        "split=test",
        f"reference_datasets=[{tmp_path / 'toy'}]",
        "reference_split=train",
        f"out_dir={tmp_path / 'eval'}",
        *common,
        cwd=tmp_path,
    )
    last = out.strip().splitlines()[-1]
    assert last.startswith("voc=") and all(
        f" {k}=" in last for k in ("voc_f1", "done_f1", "mismatch", "cls_acc")
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["episodes"] == 2 and len(metrics["per_episode"]) == 2
    assert len(list((tmp_path / "eval" / "curves").glob("*.png"))) == 2


def test_train_config_errors_name_the_key(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    from limbic.launch.config import ConfigError, to_object
    from limbic.launch.train_critic import TrainCriticJob

    conf = Path(__file__).resolve().parents[1] / "launch" / "conf"
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        job = to_object(
            compose("train_critic", overrides=["datasets=[a]", "critic=small_cnn"]), TrainCriticJob
        )
        assert (
            job.critic.model.backbone == "small_cnn" and job.critic.pairs.mismatch_fraction == 0.08
        )
        with pytest.raises(ConfigError, match="critic.pairs.mismatch_fraction"):
            to_object(
                compose(
                    "train_critic", overrides=["datasets=[a]", "critic.pairs.mismatch_fraction=0.9"]
                ),
                TrainCriticJob,
            )
        with pytest.raises(ConfigError, match="datasets"):
            to_object(compose("train_critic", overrides=["datasets=[]"]), TrainCriticJob)
        with pytest.raises(ConfigError, match="val_fraction"):
            to_object(
                compose("train_critic", overrides=["datasets=[a]", "val_fraction=1.5"]),
                TrainCriticJob,
            )
        with pytest.raises(ConfigError, match="val_fraction"):
            to_object(
                compose(
                    "train_critic",
                    overrides=["datasets=[a]", "val_datasets=[b]", "val_fraction=0.1"],
                ),
                TrainCriticJob,
            )
        for bad, key in [
            ("repeats=[1,2]", "repeats"),  # one dataset, two values
            ("repeats=[0]", "repeats"),
            ("max_episodes=[-1]", "max_episodes"),
        ]:
            with pytest.raises(ConfigError, match=key):
                to_object(compose("train_critic", overrides=["datasets=[a]", bad]), TrainCriticJob)


def _episodes_given_to_training(tmp_path: Path, monkeypatch, **job_kw) -> dict:
    """Run ``limbic-train-critic`` on datasets a (10 episodes) and b (5) up to the training call;
    return the training and validation episodes it was given."""
    from limbic.launch import train_critic as cli
    from limbic.launch.train_critic import TrainCriticJob

    a = make_episodes(10, seed=0, hw=32, fail_fraction=0.2)
    b = make_episodes(5, seed=1, hw=32, fail_fraction=0.2, start_index=10)
    write_dataset(a, tmp_path / "a")
    write_dataset(b, tmp_path / "b")
    seen = {}

    def fake_train(config, episodes, val):
        seen["train"], seen["val"] = episodes, val
        raise SystemExit(0)

    monkeypatch.setattr(cli, "train_critic", fake_train)
    job = TrainCriticJob(datasets=[str(tmp_path / "a"), str(tmp_path / "b")], **job_kw)
    job.critic.model.views = ["front", "wrist"]
    with pytest.raises(SystemExit):
        cli.run(job)
    return seen


def test_val_fraction_holds_out_the_last_episodes_of_each_dataset(tmp_path: Path, monkeypatch):
    seen = _episodes_given_to_training(tmp_path, monkeypatch, val_fraction=0.2)
    train_ids = [e.episode_index for e in seen["train"]]
    val_ids = [e.episode_index for e in seen["val"]]
    # each dataset numbers its episodes from 0: a keeps 0-7 and gives 8-9, b keeps 0-3 and gives 4
    assert train_ids == [*range(8), *range(4)]
    assert val_ids == [8, 9, 4]


def test_repeats_and_max_episodes_shape_the_training_set(tmp_path: Path, monkeypatch):
    seen = _episodes_given_to_training(
        tmp_path,
        monkeypatch,
        val_fraction=0.2,
        max_episodes=[3, 0],  # a: 3 of its 8 training episodes; b: all
        repeats=[1, 2],  # b's episodes twice each
    )
    ids = [(Path(e.metadata["root"]).name, e.episode_index) for e in seen["train"]]
    from_a = [i for name, i in ids if name == "a"]
    assert len(from_a) == 3 and len(set(from_a)) == 3 and set(from_a) <= set(range(8))
    assert [i for name, i in ids if name == "b"] == [0, 1, 2, 3, 0, 1, 2, 3]
    # validation is held out before the sample: the same last episodes as without it
    assert [e.episode_index for e in seen["val"]] == [8, 9, 4]
