"""``limbic-train``: learn a task in simulation from scripted demonstrations and online RL.

    limbic-train                                   # SO-101 pick-and-place: server, learner, 2 actors
    limbic-train task=reach online_episodes=50 actors=3
    limbic-train algorithm=bc                         # behaviour cloning only
    limbic-train critic_checkpoint=runs/critic/critic.pt   # add the critic's shaped reward
    limbic-train runtime=inprocess                  # the single-process loop (no server, no actors)
    limbic-train resume=true                        # continue an interrupted run in out_dir
    torchrun --nproc-per-node 4 -m limbic.launch.train runtime=inprocess   # data-parallel over 4 GPUs

Shows one progress bar (episodes, held-out success, updates/s, weight version) and ends by
printing the held-out success rate and where the checkpoint, curves, videos and datasets are.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from limbic.launch.config import ConfigError, to_object
from limbic.runtime.distributed import DistributedError
from limbic.runtime.supervisor import TrainConfig


def register_schema() -> None:
    """Make ``train_schema`` (``launch/conf/train.yaml``'s first default) known to Hydra."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


register_schema()  # before @hydra.main composes train.yaml


@hydra.main(version_base=None, config_path="conf", config_name="train")
def _hydra_main(dcfg: DictConfig) -> None:
    try:
        cfg = to_object(dcfg, TrainConfig)
    except ConfigError as e:
        print(f"limbic-train: {e}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if cfg.runtime == "inprocess":
        _in_process(cfg)
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print(
            "limbic-train: runtime: under torchrun the learning loop runs data-parallel in "
            "process; add runtime=inprocess (the asynchronous system starts its own processes)",
            file=sys.stderr,
        )
        sys.exit(2)
    else:
        _asynchronous(cfg)


def _asynchronous(cfg: TrainConfig) -> None:
    from limbic.launch.compose import stop_event_on_signals
    from limbic.runtime.supervisor import print_summary, run_train

    summary = run_train(cfg, stop_event_on_signals(), progress=cfg.progress)
    print_summary(cfg, summary)


def _in_process(cfg: TrainConfig) -> None:
    from limbic.runtime.evaluation import format_cells, format_localiser, format_outcomes
    from limbic.runtime.learn import learn

    learn_cfg = cfg.learn_config()
    try:
        result = learn(learn_cfg)
    except DistributedError as e:
        print(f"limbic-train: {e}", file=sys.stderr)
        sys.exit(2)
    if result.rank != 0:  # rank 0 speaks for the data-parallel group
        return
    last = result.curve[-1]
    print(
        f"final held-out success rate: {result.final_success:.0%} "
        f"({cfg.eval_episodes} episodes, split {cfg.eval_split}) after "
        f"{last.episodes} online episodes, {result.updates} updates, {result.minutes:.1f} min"
        + (f" on {result.world_size} data-parallel ranks" if result.world_size > 1 else "")
    )
    if cells := format_cells(last.by_cell):
        print(cells)
    if located := format_localiser(last.localiser_mm):
        print(located)
    if ends := format_outcomes(last.outcomes):
        print(ends)
    print(
        f"checkpoint: {result.out_dir / 'policy.pt'}; curve: {result.out_dir / 'curve.png'}; videos: {result.out_dir}/eval_*.mp4"
    )


def main() -> None:
    """Console entry point."""
    _hydra_main()


if __name__ == "__main__":
    main()
