"""``limbic-eval-policy``: play a saved policy on held-out layouts of the scene it learned in.

    limbic-eval-policy policy=runs/so101_pick_place/policy.pt episodes=200

The scene (arm, task, cameras, control) is the one the checkpoint's learning run used (a
``limbic-train`` checkpoint, either runtime, records it); episode ``i`` plays the layout the
learning loop's evaluation ``i`` plays (the same reset seeds), so the first ``eval_episodes``
repeat its last evaluation and the rest extend it. Prints the success rate, the mean episode
length, successes by the object's cell, for a policy that reads a pre-trained localiser that
localiser's error along the approaches, and for a task that carries its object (pick-and-place,
stack) how the episodes ended (``limbic.runtime.evaluation.OUTCOMES``); writes
``<out_dir>/eval.json`` (and videos of the first ``videos`` episodes). The last line is
``success=... episodes=... mean_length=...``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig
from tqdm import tqdm

from limbic.launch.config import ConfigError, require, to_object


@dataclass
class EvalPolicyJob:
    """A policy evaluation job."""

    policy: str = ""
    """Checkpoint written by ``limbic-train`` (``runs/<run>/policy.pt``)."""
    episodes: int = 100
    split: str = "heldout"
    """Layouts to play: ``heldout`` (unseen colours, cells and phrasings) or ``train``."""
    out_dir: str = "eval/policy"
    videos: int = 0
    """Episodes (the first ones) written as MP4 to ``out_dir``."""
    threads: int = 0
    """torch threads (0: leave torch's default)."""
    progress: bool = True

    def __post_init__(self) -> None:
        require(
            bool(self.policy),
            "policy",
            "give the checkpoint, e.g. policy=runs/so101_pick_place/policy.pt",
        )
        require(self.episodes >= 1, "episodes", f"must be >= 1, got {self.episodes}")
        require(
            self.split in ("heldout", "train"),
            "split",
            f"expected heldout or train, got {self.split!r}",
        )
        require(self.videos >= 0, "videos", f"must be >= 0, got {self.videos}")


ConfigStore.instance().store(name="eval_policy_schema", node=EvalPolicyJob)


@dataclass
class PolicyEvaluation:
    """What ``limbic-eval-policy`` measured (``eval.json``)."""

    policy: str
    split: str
    episodes: int
    success_rate: float
    mean_length: float
    by_cell: dict[str, list[int]]
    localiser_mm: list[float]
    """Mean absolute error in x, y, z (mm) along the approaches; empty without a localiser."""
    outcomes: dict[str, int]
    """Episodes by how they ended (pick-and-place, stack; ``runtime.evaluation.OUTCOMES``)."""

    def summary_line(self) -> str:
        return (
            f"success={self.success_rate:.3f} episodes={self.episodes} "
            f"mean_length={self.mean_length:.1f}"
        )


def scene_of(path: str | Path):
    """The simulated scene a ``limbic-train`` checkpoint was learned in (its ``SimConfig``)."""
    from limbic.sim.env import SimConfig

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    learned = ckpt.get("learn_config")
    if not isinstance(learned, dict) or not isinstance(learned.get("robot"), dict):
        raise ConfigError(
            "policy",
            f"{path} does not say which scene it was learned in (no learn_config: a checkpoint "
            "of limbic-train, either runtime, does)",
        )
    return to_object(learned["robot"]["sim"], SimConfig)


def evaluate_saved_policy(job: EvalPolicyJob) -> PolicyEvaluation:
    """Load the policy and its scene, play ``job.episodes`` episodes, write ``eval.json``."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from limbic.policy.encoders import LanguageEncoder
    from limbic.policy.vla import VLAPolicy
    from limbic.runtime.evaluation import EvalTally, play, write_video
    from limbic.runtime.rollout import Featurizer
    from limbic.sim.envs import make_sim_env

    if job.threads:
        torch.set_num_threads(job.threads)
    if not Path(job.policy).is_file():
        raise ConfigError("policy", f"{job.policy} is not a file")
    sim = scene_of(job.policy)
    policy = VLAPolicy.load(job.policy).eval()
    language = LanguageEncoder()  # caches each instruction's embedding

    def lang(text: str) -> torch.Tensor:
        return language([text])

    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = make_sim_env(sim)
    tally = EvalTally()
    try:
        featurize = Featurizer(policy)
        bar = tqdm(range(job.episodes), desc="evaluating", disable=not job.progress)
        for i in bar:
            keep = i < job.videos
            ep, located, outcome = play(
                env, policy, featurize, lang, i, job.split, keep_frames=keep
            )
            tally.add(ep, policy.cfg.agent.gamma, located, outcome)
            bar.set_postfix(success=f"{tally.wins / tally.episodes:.0%}")
            if keep:
                write_video(out / f"eval_{i:03d}.mp4", ep.frames, int(sim.control_hz))
        step_m = env.arm.max_ee_step_m
    finally:
        env.close()
    result = PolicyEvaluation(
        policy=str(job.policy),
        split=job.split,
        episodes=job.episodes,
        success_rate=tally.wins / job.episodes,
        mean_length=tally.steps / job.episodes,
        by_cell=tally.by_cell(),
        localiser_mm=tally.localiser_mm(step_m),
        outcomes=tally.outcomes(),
    )
    (out / "eval.json").write_text(json.dumps(asdict(result), indent=1))
    return result


def run(job: EvalPolicyJob) -> PolicyEvaluation:
    """Evaluate and print the figures, the summary line last."""
    from limbic.runtime.evaluation import format_cells, format_localiser, format_outcomes

    result = evaluate_saved_policy(job)
    print(
        f"{job.policy}: {result.success_rate:.1%} of {result.episodes} episodes "
        f"({result.split} split), mean length {result.mean_length:.1f} steps"
    )
    lines = (
        format_cells(result.by_cell),
        format_localiser(result.localiser_mm),
        format_outcomes(result.outcomes),
    )
    for line in lines:
        if line:
            print(line)
    print(f"wrote {Path(job.out_dir) / 'eval.json'}")
    print(result.summary_line())
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="eval_policy")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(to_object(cfg, EvalPolicyJob))
    except ConfigError as e:
        print(f"limbic-eval-policy: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Console-script entry point."""
    _hydra_main()


if __name__ == "__main__":
    main()
