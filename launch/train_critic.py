"""``limbic-train-critic``: train the progress critic on LeRobotDataset folders.

    limbic-train-critic datasets='[data/demos,data/failures]' split=train \
        val_datasets='[data/demos]' val_split=test critic.steps=5000

The config is ``launch/conf/train_critic.yaml`` (critic options in the ``critic/`` group);
the typed schema is :class:`TrainCriticJob`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from limbic.critic.train import CriticTrainConfig, train_critic
from limbic.data.reader import load_many
from limbic.launch.config import require, to_object


@dataclass
class TrainCriticJob:
    """A critic training job: where the episodes come from and how to train."""

    datasets: list[str] = field(default_factory=list)
    """LeRobotDataset folders to train on (demos, noisy and failed episodes)."""
    split: str | None = None
    """Split of ``meta/info.json`` to take from each training dataset (None: all episodes)."""
    val_datasets: list[str] = field(default_factory=list)
    """Held-out LeRobotDataset folders scored during training (may repeat ``datasets`` with another split)."""
    val_split: str | None = None
    """Split to take from each validation dataset."""
    val_fraction: float = 0.0
    """Without ``val_datasets``: hold out this fraction of each training dataset's episodes (its
    last ones, unseen seeds) for validation, threshold calibration and the best checkpoint."""
    repeats: list[int] = field(default_factory=list)
    """Per training dataset, how many times each of its episodes enters training (empty: once
    each); e.g. a one-demo fine-tune weights its demonstrations up: ``repeats='[4,1]'``."""
    max_episodes: list[int] = field(default_factory=list)
    """Per training dataset, train on at most this many of its episodes, drawn at random with
    ``critic.seed`` (0: all; empty: all of every dataset); e.g. a fine-tune mixes a sample of the
    original recordings with the new demonstrations. Validation episodes are held out first."""
    critic: CriticTrainConfig = field(default_factory=CriticTrainConfig)
    """Model, labels and optimisation."""

    def __post_init__(self) -> None:
        require(
            len(self.datasets) > 0,
            "datasets",
            "give at least one LeRobotDataset folder, e.g. datasets='[data/demos]'",
        )
        require(
            0.0 <= self.val_fraction < 1.0,
            "val_fraction",
            f"expected [0, 1), got {self.val_fraction}",
        )
        require(
            not (self.val_fraction and self.val_datasets),
            "val_fraction",
            "give either val_datasets or val_fraction, not both",
        )
        for key in ("repeats", "max_episodes"):
            values = getattr(self, key)
            require(
                not values or len(values) == len(self.datasets),
                key,
                f"expected one value per training dataset ({len(self.datasets)}), got {len(values)}",
            )
        require(
            all(r >= 1 for r in self.repeats), "repeats", f"expected >= 1 each, got {self.repeats}"
        )
        require(
            all(n >= 0 for n in self.max_episodes),
            "max_episodes",
            f"expected >= 0 each (0: all), got {self.max_episodes}",
        )


ConfigStore.instance().store(name="train_critic_schema", node=TrainCriticJob)


def run(job: TrainCriticJob) -> None:
    """Load the episodes and train; prints where the checkpoint went."""
    views = job.critic.model.views
    rng = random.Random(job.critic.seed)
    episodes, val = [], []
    for i, folder in enumerate(job.datasets):
        mine = load_many([folder], split=job.split, views=views)
        if job.val_fraction:
            n_val = int(round(len(mine) * job.val_fraction))
            cut = len(mine) - n_val if 0 < n_val < len(mine) else len(mine)
            mine, val = mine[:cut], val + mine[cut:]
        limit = job.max_episodes[i] if job.max_episodes else 0
        if 0 < limit < len(mine):
            keep = sorted(rng.sample(range(len(mine)), limit))
            mine = [mine[k] for k in keep]
        episodes += mine * (job.repeats[i] if job.repeats else 1)
    if job.val_datasets:
        val = load_many(job.val_datasets, split=job.val_split, views=views)
    val = val or None
    print(
        f"training on {len(episodes)} episodes ({sum(e.succeeded for e in episodes)} successful)"
        + (f", validating on {len(val)}" if val else "")
    )
    result = train_critic(job.critic, episodes, val)
    if result.val_metrics:
        print("validation: " + " ".join(f"{k}={v:.4f}" for k, v in result.val_metrics.items()))
    best = f" best={result.best_checkpoint}" if result.best_checkpoint else ""
    print(f"checkpoint={result.checkpoint}{best} step={result.step}")


@hydra.main(version_base="1.3", config_path="conf", config_name="train_critic")
def _hydra_main(cfg: DictConfig) -> None:
    run(to_object(cfg, TrainCriticJob))


def main() -> None:
    """Console-script entry point."""
    _hydra_main()


if __name__ == "__main__":
    main()
