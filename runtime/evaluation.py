"""Playing a policy on held-out layouts: the action source, the tallies and the figures.

The learning loop evaluates its live policy with these after every ``eval_every`` episodes
(``limbic.runtime.learn``); ``limbic-eval-policy`` evaluates a saved one on as many episodes as
asked, so a figure from 40 episodes can be checked on hundreds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from limbic.policy.vla import VLAPolicy
from limbic.runtime.rollout import EpisodeRecord, run_episode
from limbic.sim.localise import OBJECT_OFFSET, goal_position, grasp_finder, object_position
from limbic.sim.tasks import GRID

EVAL_SEED = 3_000_000
"""Reset seed of evaluation episode 0 (episode ``i`` plays ``EVAL_SEED + i``)."""


def chunked_actions(policy: VLAPolicy, device: torch.device | str, deterministic: bool):
    """An action source for :func:`~limbic.runtime.rollout.run_episode` backed by ``policy``:
    one inference per ``policy.cfg.steps_per_inference`` steps, the chunk's actions executed
    open-loop in between. Make one per episode (a new episode, step 0, also starts a new
    chunk)."""
    queue: list[np.ndarray] = []
    per_inference = policy.cfg.steps_per_inference

    def act(obs, tokens, lang):
        if obs.step == 0:
            queue.clear()
        if not queue:
            state = torch.from_numpy(obs.state)[None].to(device)
            chunk = policy.act_tokens(tokens, state, lang, deterministic=deterministic)
            queue.extend(chunk[0, :per_inference].cpu().numpy())
        return queue.pop(0)

    return act


OUTCOMES = (
    "success",
    "never_lifted",
    "pushed_never_lifted",
    "let_go_near_goal",
    "let_go_away",
    "held_at_end",
)
"""How an evaluation episode of a task that carries its object ends (:class:`ObjectTrace`)."""
CARRY_TASKS = ("pick_place", "stack")
"""Tasks whose object is picked up and carried to a goal."""
LIFT_M = 0.02
"""Raised this far above where it started, the object was lifted (m, at the task's scale 1)."""
PUSH_M = 0.01
"""Moved this far along the table without a lift, it was pushed."""
NEAR_GOAL_M = 0.04
"""Let go with its centre this close to the goal's along the table, it was let go near it."""


class ObjectTrace:
    """Follows the task's object through an episode of a task that carries it (pick-and-place,
    stack; limbic's own simulator) and says how the episode ended (:data:`OUTCOMES`): a
    success; never lifted (``pushed_`` when it slid at least ``PUSH_M``); lifted and let go,
    within ``NEAR_GOAL_M`` of the goal or away from it; or still held up at the end."""

    def __init__(self, env):
        self.env = env
        self.scale = float(getattr(env.task, "scale", 1.0))
        self.start = np.zeros(3)
        self.top = -np.inf

    @staticmethod
    def follows(env) -> bool:
        task = getattr(env, "task", None)
        return getattr(task, "name", None) in CARRY_TASKS

    def reset(self) -> None:
        self.start = object_position(self.env)
        self.top = float(self.start[2])

    def watch(self, act):
        """``act`` with the object's height read before every action."""

        def watched(obs, tokens, lang):
            self.top = max(self.top, float(object_position(self.env)[2]))
            return act(obs, tokens, lang)

        return watched

    def outcome(self, success: bool) -> str:
        """How the episode ended (the scene as it is now, its last state)."""
        end = object_position(self.env)
        self.top = max(self.top, float(end[2]))
        if success:
            return "success"
        if self.top - self.start[2] < LIFT_M * self.scale:
            moved = np.linalg.norm(end[:2] - self.start[:2])
            return "pushed_never_lifted" if moved >= PUSH_M * self.scale else "never_lifted"
        if end[2] - self.start[2] >= LIFT_M * self.scale:
            return "held_at_end"
        gap = np.linalg.norm(end[:2] - goal_position(self.env)[:2])
        return "let_go_near_goal" if gap < NEAR_GOAL_M * self.scale else "let_go_away"


def reads_localiser(policy: VLAPolicy) -> bool:
    """Whether ``policy``'s actor reads a pre-trained localiser (whose error evaluation reports)."""
    return policy.cfg.agent.waypoint_source == "pretrained"


@torch.no_grad()
def approach_error(env, policy: VLAPolicy, ep: EpisodeRecord, obj: np.ndarray) -> np.ndarray:
    """``policy``'s pre-trained localiser along an episode's approach, the frames up to the
    first action that closes the gripper (the object still where the reset put it, ``obj``;
    or, ``[frames, 3]``, what the localiser points to at every frame: the grasp point of a
    ``grasp``-target localiser): its summed absolute error in x, y and z (label units:
    end-effector steps) against the simulator's offset, and the number of frames."""
    closes = np.flatnonzero(ep.action[:, -1] > 0.0)
    frames = int(closes[0]) + 1 if closes.size else len(ep) + 1
    kin, q_dim = env.kin, len(env.kin.qpos_adr)
    state = ep.state[:frames]
    tools = np.stack([kin.fk(s[:q_dim].astype(np.float64))[0] for s in state])
    target = obj[None] if obj.ndim == 1 else obj[:frames]
    label = (target - tools) / env.arm.max_ee_step_m
    encoder = policy.agent.ema_encoder
    device = next(encoder.parameters()).device
    tokens = torch.from_numpy(ep.tokens[:frames].astype(np.float32)).to(device)
    predicted = encoder.locate(tokens, torch.from_numpy(state).to(device)).cpu().numpy()
    predicted = predicted[:, OBJECT_OFFSET]  # a localiser of the goal too predicts more
    return np.array([*np.abs(predicted - label).sum(0), frames], dtype=np.float64)


@dataclass
class EvalTally:
    """Sums over evaluation episodes (one rank's, or all of them after summing)."""

    wins: float = 0.0
    steps: float = 0.0
    shaped: float = 0.0
    episodes: float = 0.0
    cells: np.ndarray = field(default_factory=lambda: np.zeros((GRID, GRID, 2)))
    """Per work-area cell of the named object: successes, episodes."""
    located: np.ndarray = field(default_factory=lambda: np.zeros(4))
    """The localiser's summed |error| in x, y, z (label units) and its frames."""
    ends: np.ndarray = field(default_factory=lambda: np.zeros(len(OUTCOMES)))
    """Episodes by how they ended (:data:`OUTCOMES`; tasks that carry their object)."""

    def add(
        self,
        ep: EpisodeRecord,
        gamma: float,
        located: np.ndarray | None = None,
        outcome: str | None = None,
    ) -> None:
        self.wins += float(ep.success)
        self.steps += len(ep)
        self.shaped += ep.shaped_return(gamma)
        self.episodes += 1
        if ep.cell is not None:
            self.cells[ep.cell] += (float(ep.success), 1.0)
        if located is not None:
            self.located += located
        if outcome is not None:
            self.ends[OUTCOMES.index(outcome)] += 1

    def as_list(self) -> list[float]:
        """Every sum, flat (to sum over ranks)."""
        head = [self.wins, self.steps, self.shaped, self.episodes]
        return head + self.cells.ravel().tolist() + self.ends.tolist() + self.located.tolist()

    @classmethod
    def from_list(cls, values: list[float]) -> EvalTally:
        n, k = GRID * GRID * 2, len(OUTCOMES)
        return cls(
            *values[:4],
            cells=np.asarray(values[4 : 4 + n], np.float64).reshape(GRID, GRID, 2),
            ends=np.asarray(values[4 + n : 4 + n + k], np.float64),
            located=np.asarray(values[4 + n + k :], np.float64),
        )

    def by_cell(self) -> dict[str, list[int]]:
        return cell_counts(self.cells)

    def outcomes(self) -> dict[str, int]:
        """Episodes by how they ended (empty when no episode was followed)."""
        if not self.ends.any():
            return {}
        return {name: int(n) for name, n in zip(OUTCOMES, self.ends, strict=True)}

    def localiser_mm(self, step_m: float) -> list[float]:
        """Mean absolute error in x, y and z over the approach frames, in mm (empty: none)."""
        if not self.located[3]:
            return []
        return (self.located[:3] / self.located[3] * 1000.0 * step_m).tolist()


def cell_counts(cells: np.ndarray) -> dict[str, list[int]]:
    """``float[GRID, GRID, 2]`` (successes, episodes) as ``{"i,j": [successes, episodes]}``,
    cells with episodes only."""
    return {
        f"{i},{j}": [int(cells[i, j, 0]), int(cells[i, j, 1])]
        for i, j in zip(*np.nonzero(cells[..., 1]), strict=True)
    }


def format_cells(by_cell: dict[str, list[int]]) -> str:
    """Successes and episodes by cell as one line (empty when there is none)."""
    if not by_cell:
        return ""
    parts = [f"({key.replace(',', ', ')}) {won}/{n}" for key, (won, n) in by_cell.items()]
    return "by the named object's cell (i along x from the arm's base, j along y): " + ", ".join(
        parts
    )


def format_outcomes(outcomes: dict[str, int]) -> str:
    """Episodes by how they ended as one line (empty when there is none)."""
    if not outcomes:
        return ""
    parts = [f"{name.replace('_', ' ')} {n}" for name, n in outcomes.items() if n]
    return "how the episodes ended: " + ", ".join(parts)


def format_localiser(localiser_mm: list[float]) -> str:
    """The localiser's error along the approaches as one line (empty when there is none)."""
    if not localiser_mm:
        return ""
    x, y, z = localiser_mm
    return f"localiser along the evaluation approaches: mean error x {x:.1f} / y {y:.1f} / z {z:.1f} mm"


def play(
    env,
    policy: VLAPolicy,
    featurize,
    lang,
    index: int,
    split: str,
    keep_frames: bool = False,
    act=None,
) -> tuple[EpisodeRecord, np.ndarray | None, str | None]:
    """Evaluation episode ``index`` (reset seed ``EVAL_SEED + index`` of ``split``), the policy
    deterministic (``act``: the action source, by default :func:`chunked_actions` of
    ``policy``). Returns the episode; the localiser's error along its approach when the policy
    reads one (limbic's own simulator); how it ended (:class:`ObjectTrace`) for a task that
    carries its object, else None."""
    if act is None:
        act = chunked_actions(policy, next(policy.agent.parameters()).device, deterministic=True)
    probe = reads_localiser(policy)
    trace = ObjectTrace(env) if ObjectTrace.follows(env) else None
    start: dict[str, np.ndarray] = {}
    # a grasp-target localiser points where the tool grasps: that moves with the jaws
    grasp = grasp_finder(env) if probe and policy.cfg.agent.localiser_target == "grasp" else None
    grasps: list[np.ndarray] = []

    def on_reset() -> None:
        if probe:
            start["obj"] = object_position(env)
            grasps.clear()
        if trace is not None:
            trace.reset()

    if grasp is not None:
        policy_act = act

        def act(obs, tokens, lang):
            grasps.append(grasp.grasp_target())
            return policy_act(obs, tokens, lang)

    ep = run_episode(
        env,
        act if trace is None else trace.watch(act),
        featurize,
        lang,
        seed=EVAL_SEED + index,
        split=split,
        keep_frames=keep_frames,
        on_reset=on_reset,
    )
    if grasp is not None:
        grasps.append(grasp.grasp_target())  # the last frame's
    target = np.stack(grasps) if grasp is not None else start.get("obj")
    located = approach_error(env, policy, ep, target) if probe else None
    return ep, located, (trace.outcome(ep.success) if trace is not None else None)


def write_video(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """Frames (``uint8[H, W, 3]``) as an H.264 MP4 at ``fps``."""
    import imageio.v2 as imageio

    with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1) as w:
        for f in frames:
            w.append_data(f)
