"""``limbic-train``: learn a task in simulation from scripted demonstrations and online RL.

    limbic-train                                   # SO-101 pick-and-place, CPU, progress bar
    limbic-train task=reach online_episodes=50
    limbic-train learner=bc                         # behaviour cloning only
    limbic-train critic_checkpoint=runs/critic/critic.pt   # add the critic's shaped reward
    torchrun --nproc-per-node 4 -m limbic.launch.train     # data-parallel over 4 GPUs

Ends by printing the held-out success rate and where the checkpoint, curves and videos are.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from limbic.launch.config import ConfigError, to_object
from limbic.runtime.distributed import DistributedError
from limbic.runtime.learn import LearnConfig

ConfigStore.instance().store(name="train_schema", node=LearnConfig)


@hydra.main(version_base=None, config_path="conf", config_name="train")
def _hydra_main(dcfg: DictConfig) -> None:
    from limbic.runtime.learn import learn

    try:
        cfg = to_object(dcfg, LearnConfig)
    except ConfigError as e:
        print(f"limbic-train: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        result = learn(cfg)
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
    print(
        f"checkpoint: {result.out_dir / 'policy.pt'}; curve: {result.out_dir / 'curve.png'}; videos: {result.out_dir}/eval_*.mp4"
    )


def main() -> None:
    """Console entry point."""
    _hydra_main()


if __name__ == "__main__":
    main()
