"""``limbic-record``: record operator-driven episodes into a LeRobotDataset v3.0.

limbic-record                                  # SO-101 pick-and-place, scripted expert
limbic-record robot=sim_panda task=stack episodes=50 dataset.root=data/panda_stack
limbic-record operator=noisy episodes=200      # slow, partial and failed episodes too
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from limbic.launch.components import OperatorConfig, RobotConfig, make_operator, make_robot
from limbic.launch.config import ConfigError, require, to_object


@dataclass
class DatasetConfig:
    """Where and how episodes are written."""

    root: str = "recordings/demo"
    """Dataset folder (must not exist unless ``overwrite``)."""
    repo_id: str = "limbic/demo"
    """LeRobot repo id stored in the dataset's metadata."""
    use_videos: bool = True
    """Store camera views as MP4 (AV1) videos; false stores PNG frames."""
    vcodec: str = "libsvtav1"
    """Video codec for ``use_videos`` (LeRobot's choices: libsvtav1, h264, hevc)."""
    overwrite: bool = False
    """Replace an existing folder at ``root``."""


@dataclass
class RecordConfig:
    """Everything ``limbic-record`` needs."""

    robot: RobotConfig = field(default_factory=RobotConfig)
    operator: OperatorConfig = field(default_factory=OperatorConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    episodes: int = 10
    """Episodes to record."""
    seed: int = 0
    """Episode ``i`` resets the scene with seed ``seed + i``."""
    progress: bool = True
    """Show a progress bar."""
    settle_steps: int = 0
    """Steps the operator goes on after the task succeeds (0: the episode ends on success)."""
    task_progress: bool = False
    """Store the task's true progress on every frame (``task_progress``: simulated tasks only).
    The progress critic's labels use it where present (``critic.pairs.stored_progress``), so
    failed episodes teach how far they got; measured worse than the time-based labels so far
    (critic/README.md), hence off."""
    settle_share: float = 0.0
    """Settle for the fewest steps that make the last ``settle_share`` of the episode show the
    finished task (at least ``settle_steps``). The critic's labels call every finished frame done
    however the settling is sized (``critic.pairs.finish_at_success``); 0.05 also matches the
    labels over the whole recording (the last 5 % of a success) for short and long tasks alike."""

    def __post_init__(self) -> None:
        require(self.episodes >= 1, "episodes", f"must be >= 1, got {self.episodes}")
        require(self.settle_steps >= 0, "settle_steps", f"must be >= 0, got {self.settle_steps}")
        require(
            0.0 <= self.settle_share < 0.5,
            "settle_share",
            f"must be in [0, 0.5), got {self.settle_share}",
        )


ConfigStore.instance().store(name="record_schema", node=RecordConfig)


def record(cfg: RecordConfig):
    """Record ``cfg.episodes`` episodes and return the summary."""
    from limbic.data.writer import DatasetLayout, EpisodeWriter
    from limbic.teleop.record import record_episodes

    robot = make_robot(cfg.robot)
    with robot:
        operator = make_operator(cfg.operator, robot)
        with operator:
            env = robot.env
            layout = DatasetLayout(
                views=env.views,
                image_hw=env.cfg.camera.image_hw,
                state_names=env.state_names,
                action_spec=env.action_spec,
                fps=int(env.cfg.control_hz),
                robot_type=robot.robot_type,
                task_progress=cfg.task_progress and bool(env.task.stage_weights),
            )
            writer = EpisodeWriter(
                cfg.dataset.root,
                layout,
                repo_id=cfg.dataset.repo_id,
                use_videos=cfg.dataset.use_videos,
                vcodec=cfg.dataset.vcodec,
                overwrite=cfg.dataset.overwrite,
            )
            return record_episodes(
                robot,
                operator,
                writer,
                cfg.episodes,
                seed=cfg.seed,
                episode_info={"task": env.cfg.task, "arm": env.cfg.arm},
                episode_goal=lambda: env.task.goal,
                progress=cfg.progress,
                settle_steps=cfg.settle_steps,
                settle_share=cfg.settle_share,
            )


@hydra.main(version_base=None, config_path="conf", config_name="record")
def _hydra_main(dcfg: DictConfig) -> int:
    try:
        cfg = to_object(dcfg, RecordConfig)
        summary = record(cfg)
    except (ConfigError, FileExistsError) as e:
        print(f"limbic-record: {e}", file=sys.stderr)
        sys.exit(2)
    print(summary)
    sys.exit(130 if summary.interrupted else 0)


def main() -> None:
    """Console entry point."""
    _hydra_main()


if __name__ == "__main__":
    main()
