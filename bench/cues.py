"""``limbic-bench cues``: what a pick-and-place policy's first action chunk follows — the cube it
is told to pick, or the bowl beside it.

The layout sampler keeps the bowl at least 7.5 cm from the cube in a 9 × 18 cm work area, so
across layouts the bowl's position predicts the cube's (in y, a correlation of about −0.7). A
policy can learn that shortcut from a few demonstrations instead of finding the cube. Two
measures, on the same layouts for the policy and, as the baseline, the scripted expert:

* **Regression**: the first chunk's summed tool motion (x and y) is regressed on the cube's and
  the bowl's offsets from the tool at reset, with an intercept. The expert's approach moves
  about 1 m per m of cube offset and 0 per m of bowl offset.
* **Intervention**: the bowl alone is mirrored across the work area's centre line (the cube and
  everything else stay), the policy acts again, and the change of its first chunk's y motion is
  divided by the bowl's shift (least squares through the origin). A policy that follows the
  cube scores 0.

It plays the default scene (the SO-101, the default cameras and start): a policy trained with
``camera=diagonal`` or another ``home_xy`` is measured outside what it was trained on.

The last line is ``cube_dx=... cube_dy=... bowl_dy=... bowl_shift_dy=... layouts=... shifted=...``
for the policy.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

import limbic.sim  # noqa: F401  (chooses the headless GL backend before mujoco loads)
from limbic.sim.counterfactual import goal_body, show_goal_at
from limbic.sim.env import SimConfig, SimEnv
from limbic.sim.envs import make_expert
from limbic.sim.expert import ScriptedExpert

ChunkSource = Callable[[SimEnv, object], np.ndarray]
"""``(env, observation) -> [K, A]`` actions in the arm's units, for the state the env is in
(it may step the env: the measures read everything they need before calling it)."""

MIN_BOWL_GAP_M = 0.05
"""A mirrored bowl must stay this far from the cube (centres) for a layout to be shifted."""
MIN_BOWL_SHIFT_M = 0.06
"""Only bowls at least half this far from the centre line are mirrored (a real move)."""


@dataclass
class CueFigures:
    """Per m of offset: the first chunk's tool motion along x and y."""

    cube_dx: float
    cube_dy: float
    bowl_dx: float
    bowl_dy: float
    bowl_shift_dy: float
    """Change of the chunk's y motion per m the bowl alone was moved (0 for a cube follower)."""
    layouts: int
    shifted: int


def measure(env: SimEnv, chunk: ChunkSource, seeds: list[int], split: str = "train") -> CueFigures:
    """Both measures over the layouts of ``seeds``; ``chunk`` is asked twice per shifted layout."""
    goal_body(env)  # only pick_place has a bowl to move (a ValueError names the task)
    rows, motion, shifts = [], [], []
    for seed in seeds:
        obs = env.reset(seed=seed, split=split)
        tool = env.controller.tool_pose(env.data)[0][:2].copy()
        info = env.goal_info()
        cube, bowl = info["cube"][:2].copy(), info["bowl"].copy()
        moved = bowl.copy()
        moved[1] = 2 * env.arm.work_center_xy[1] - bowl[1]
        first = np.asarray(chunk(env, obs), dtype=np.float64)[:, :2].sum(0)
        rows.append([*(cube - tool), *(bowl[:2] - tool), 1.0])
        motion.append(first)
        if (
            abs(moved[1] - bowl[1]) >= MIN_BOWL_SHIFT_M
            and np.linalg.norm(moved[:2] - cube) >= MIN_BOWL_GAP_M
        ):
            env.reset(seed=seed, split=split)  # the same layout, the bowl alone moved
            again = np.asarray(chunk(env, show_goal_at(env, moved[:2])), dtype=np.float64)
            again = again[:, :2].sum(0)
            shifts.append((moved[1] - bowl[1], again[1] - first[1]))
    if len(rows) < 6:
        raise ValueError(f"cues needs at least 6 layouts for its regression, got {len(rows)}")
    x, y = np.asarray(rows), np.asarray(motion)
    coef_x, *_ = np.linalg.lstsq(x, y[:, 0], rcond=None)
    coef_y, *_ = np.linalg.lstsq(x, y[:, 1], rcond=None)
    if shifts:
        s = np.asarray(shifts)
        shift_slope = float((s[:, 0] * s[:, 1]).sum() / (s[:, 0] ** 2).sum())
    else:
        shift_slope = float("nan")
    return CueFigures(
        cube_dx=float(coef_x[0]),
        cube_dy=float(coef_y[1]),
        bowl_dx=float(coef_x[2]),
        bowl_dy=float(coef_y[3]),
        bowl_shift_dy=shift_slope,
        layouts=len(rows),
        shifted=len(shifts),
    )


def expert_chunk(expert: ScriptedExpert, steps: int) -> ChunkSource:
    """The scripted expert's next ``steps`` actions, played on the env (privileged state)."""

    def chunk(env: SimEnv, _obs: object) -> np.ndarray:
        expert.reset()
        actions = []
        for _ in range(steps):
            action = expert.act()
            actions.append(action)
            env.step(action)
        return np.stack(actions)

    return chunk


def policy_chunk(path: str) -> tuple[ChunkSource, int]:
    """A saved policy's deterministic first chunk (and its length)."""
    from limbic.policy.encoders.language import LanguageEncoder
    from limbic.policy.vla import VLAPolicy
    from limbic.runtime.rollout import Featurizer

    policy = VLAPolicy.load(path).eval()
    featurize, language = Featurizer(policy), LanguageEncoder()  # it caches each instruction

    def chunk(env: SimEnv, obs) -> np.ndarray:
        tokens, _, _ = featurize(obs)
        state = torch.from_numpy(obs.state)[None]
        return policy.act_tokens(tokens, state, language([env.instruction]))[0].numpy()

    return chunk, policy.chunk_len


def _row(name: str, f: CueFigures) -> str:
    return (
        f"{name:8s} {f.cube_dx:+8.2f} {f.cube_dy:+8.2f} {f.bowl_dx:+8.2f} {f.bowl_dy:+8.2f}"
        f" {f.bowl_shift_dy:+12.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="limbic-bench cues", description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", required=True, help="a policy checkpoint (policy.pt)")
    p.add_argument("--layouts", type=int, default=100, help="layouts (episode seeds)")
    p.add_argument("--split", default="train", choices=("train", "heldout"))
    p.add_argument("--seed-base", type=int, default=4_000_000, help="first layout's seed")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = list(range(args.seed_base, args.seed_base + args.layouts))
    chunk, steps = policy_chunk(args.policy)
    env = SimEnv(SimConfig(task="pick_place"))
    try:
        expert = measure(env, expert_chunk(make_expert(env, seed=0), steps), seeds, args.split)
        policy = measure(env, chunk, seeds, args.split)
    finally:
        env.close()
    print(
        f"first {steps}-action chunk, tool motion per m of offset at reset "
        f"({policy.layouts} {args.split} layouts, {policy.shifted} with the bowl mirrored)"
    )
    print(
        f"{'':8s} {'dx/cube':>8s} {'dy/cube':>8s} {'dx/bowl':>8s} {'dy/bowl':>8s} {'dy/bowl moved':>12s}"
    )
    print(_row("expert", expert))
    print(_row("policy", policy))
    print(
        f"cube_dx={policy.cube_dx:.3f} cube_dy={policy.cube_dy:.3f} bowl_dy={policy.bowl_dy:.3f} "
        f"bowl_shift_dy={policy.bowl_shift_dy:.3f} layouts={policy.layouts} shifted={policy.shifted}"
    )
    return 0
