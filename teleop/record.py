"""Record operator-driven episodes (demonstrations) into a LeRobotDataset.

The loop is the same for a scripted operator in simulation and a person at a physical arm:
start an episode, ask the operator for an action, send it, record what the arm did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from limbic.data.writer import EpisodeWriter, stop_on_signals
from limbic.robot.base import EpisodicRobot, Robot
from limbic.teleop.base import Teleoperator


@dataclass
class RecordSummary:
    """What a recording session produced."""

    episodes: int
    successes: int
    steps: int
    root: Path
    interrupted: bool = False

    @property
    def success_rate(self) -> float:
        """Fraction of saved episodes whose success signal fired."""
        return self.successes / self.episodes if self.episodes else 0.0

    def __str__(self) -> str:
        head = "recording interrupted" if self.interrupted else "recording finished"
        return (
            f"{head}: {self.episodes} episodes ({self.steps} steps), "
            f"success rate {self.success_rate:.1%}, dataset at {self.root}"
        )


def _settle_for(success_step: int, settle_steps: int, settle_share: float) -> int:
    """Settle steps after success on ``success_step`` (see :func:`record_episodes`)."""
    if settle_share <= 0.0:
        return settle_steps
    return max(settle_steps, int(success_step * settle_share / (1.0 - settle_share)) + 1)


def record_episodes(
    robot: Robot,
    operator: Teleoperator,
    writer: EpisodeWriter,
    episodes: int,
    seed: int = 0,
    split: str | None = None,
    episode_info: dict[str, Any] | None = None,
    episode_goal: Callable[[], dict[str, str]] | None = None,
    progress: bool = True,
    settle_steps: int = 0,
    settle_share: float = 0.0,
) -> RecordSummary:
    """Record ``episodes`` episodes; episode ``i`` uses seed ``seed + i``.

    An episode ends on the step its success signal first fires, or with ``settle_steps`` more
    steps of the operator after it (the arm letting go and backing off): frames of a finished
    task that teach a progress critic what "done" looks like. The episode's ``success`` is then
    the signal at its last step, so a task undone while settling counts as failed.

    ``settle_share`` sizes the settling to the episode instead: after success on step ``k``
    the operator goes on for ``max(settle_steps, floor(k * share / (1 - share)) + 1)`` steps.
    With ``settle_steps=0`` that is the fewest that make the last ``share`` of the episode's
    frames (and no earlier one) show the finished task, whether the task takes 3 steps or 60;
    with ``share = 0.05`` these are exactly the frames that the critic's labels over the whole
    recording call done (:func:`limbic.critic.labels.done_labels` with
    ``finish_at_success=False``; by default every finished frame is done anyway).

    ``episode_goal``, called once an episode ends, names what the episode was asked to reach
    (object slot -> colour in simulation); it is stored as the episode's ``goal``, which tells
    the critic which recordings share a goal whatever their phrasing.

    Ctrl-C or SIGTERM stops at the next step: the unfinished episode is dropped, the dataset
    finalised, and every episode saved so far stays readable.
    """
    if not 0.0 <= settle_share < 0.5:
        raise ValueError(f"settle_share must be in [0, 0.5), got {settle_share}")
    if not isinstance(robot, EpisodicRobot):
        raise TypeError(
            f"{type(robot).__name__} cannot frame episodes (start_episode/instruction/success)"
        )
    with_progress = writer.layout.task_progress
    if with_progress and not callable(getattr(robot, "task_progress", None)):
        raise TypeError(f"{type(robot).__name__} cannot tell the task's progress (task_progress)")
    summary = RecordSummary(0, 0, 0, writer.root)
    bar = tqdm(total=episodes, desc="recording", unit="ep", disable=not progress)
    try:
        with stop_on_signals() as stop:
            for i in range(episodes):
                if stop:
                    break
                ep_seed = seed + i
                obs = robot.start_episode(seed=ep_seed, split=split)
                operator.on_episode_start()
                success = False
                reached: int | None = None  # step on which success first fired
                settle = settle_steps
                steps = 0
                # room for the longest settling: success on the last step
                most = _settle_for(robot.step_limit, settle_steps, settle_share)
                for t in range(robot.step_limit + most):
                    # the true progress of the state this frame shows
                    progress = robot.task_progress() if with_progress else None
                    action = operator.get_action(obs)
                    sent = robot.send_action(action)
                    success = robot.success()
                    if success and reached is None:
                        reached = t
                        settle = _settle_for(t, settle_steps, settle_share)
                    if reached is not None:
                        done = t - reached >= settle
                    else:
                        done = t >= robot.step_limit - 1
                    writer.add_step(
                        obs,
                        sent,
                        reward=float(success),
                        success=success,
                        done=done,
                        intervention=operator.is_intervening,
                        task_progress=progress,
                    )
                    steps += 1
                    obs = robot.get_observation()
                    if done or stop:
                        break
                if stop:
                    break  # the unfinished episode is dropped by finalize()
                info = {
                    "seed": ep_seed,
                    # the split the episode was drawn from, also when the robot's config set it
                    "split": str(split or getattr(robot, "split", None) or "train"),
                    "success": success,
                    "instruction": robot.instruction,
                    "operator": operator.name,
                    **(episode_info or {}),
                }
                if episode_goal is not None:
                    info["goal"] = dict(episode_goal())
                mode = getattr(operator, "mode", None)
                if mode is not None:
                    info["mode"] = str(mode)
                writer.save_episode(info)
                summary.episodes += 1
                summary.successes += int(success)
                summary.steps += steps
                bar.update(1)
                bar.set_postfix(success=f"{summary.success_rate:.0%}")
            summary.interrupted = bool(stop)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        bar.close()
        writer.finalize()
    return summary
