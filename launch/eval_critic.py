"""``limbic-eval-critic``: score a critic checkpoint on held-out LeRobotDataset episodes.

    limbic-eval-critic checkpoint=runs/critic/checkpoints/last.pt \
        datasets='[data/demos,data/rollouts]' split=test reference_datasets='[data/demos]' reference_split=train

Writes ``<out_dir>/metrics.json`` and ``<out_dir>/curves/*.png``; the last line printed is
``voc=... voc_f1=... done_f1=... mismatch=... cls_acc=...``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from limbic.critic.evaluate import CriticEvalConfig, evaluate_critic, summary_line
from limbic.critic.features import FrameTokens
from limbic.critic.model import ProgressCritic
from limbic.data.reader import load_many
from limbic.launch.config import require, to_object


@dataclass
class EvalCriticJob:
    """A critic evaluation job."""

    checkpoint: str = ""
    """Critic checkpoint (``last.pt`` of a training run, or an exported critic)."""
    datasets: list[str] = field(default_factory=list)
    """LeRobotDataset folders holding the held-out episodes (successes and failures)."""
    split: str | None = None
    """Split of ``meta/info.json`` to evaluate (None: all episodes)."""
    reference_datasets: list[str] = field(default_factory=list)
    """Where reference goal frames for the backward value come from (empty: the evaluated episodes, leaving each one out)."""
    reference_split: str | None = None
    """Split of the reference datasets."""
    out_dir: str = "eval/critic"
    """Where metrics.json and the value-curve PNGs go."""
    device: str = "cpu"
    """Torch device."""
    num_threads: int = 0
    """torch CPU threads (0: torch's default)."""
    token_cache_dir: str | None = None
    """Read (and add to) frame tokens kept on disk by training's ``critic.token_cache_dir``."""
    eval: CriticEvalConfig = field(default_factory=CriticEvalConfig)
    """Scoring options."""

    def __post_init__(self) -> None:
        require(
            bool(self.checkpoint),
            "checkpoint",
            "give the critic checkpoint, e.g. checkpoint=runs/critic/checkpoints/last.pt",
        )
        require(
            len(self.datasets) > 0,
            "datasets",
            "give at least one LeRobotDataset folder, e.g. datasets='[data/rollouts]'",
        )


ConfigStore.instance().store(name="eval_critic_schema", node=EvalCriticJob)


def run(job: EvalCriticJob) -> dict:
    """Load the critic and the episodes, evaluate, print the summary line last."""
    if job.num_threads > 0:
        torch.set_num_threads(job.num_threads)
    critic = ProgressCritic.from_checkpoint(job.checkpoint, map_location=job.device).to(job.device)
    episodes = load_many(job.datasets, split=job.split, views=list(critic.views))
    references = (
        load_many(job.reference_datasets, split=job.reference_split, views=list(critic.views))
        if job.reference_datasets
        else None
    )
    tokens = (
        FrameTokens(critic, episodes, cache_dir=job.token_cache_dir)
        if job.token_cache_dir and critic.backbone.frozen
        else None
    )
    metrics = evaluate_critic(
        critic, episodes, job.out_dir, references=references, config=job.eval, tokens=tokens
    )
    for task, m in metrics["per_task"].items():
        print(f"[{task}] {summary_line(m)}")
    print(f"wrote {job.out_dir}/metrics.json and {len(episodes)} value curves")
    print(summary_line(metrics))
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="eval_critic")
def _hydra_main(cfg: DictConfig) -> None:
    run(to_object(cfg, EvalCriticJob))


def main() -> None:
    """Console-script entry point."""
    _hydra_main()


if __name__ == "__main__":
    main()
