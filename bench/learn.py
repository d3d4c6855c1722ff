"""``limbic-bench learn``: sample efficiency of BC only, sparse-reward RL and shaped-reward RL.

All arms start from the same scripted demonstrations (same seeds) on the default task
(SO-101 pick-and-place, two 128x128 views; ``--env gym_hil/PandaPickCube`` for gym-hil's cube
lifting through limbic's adapter) and are evaluated on the same held-out seeds of
the held-out split. The shaped arm needs a progress-critic checkpoint (``--critic``). The
optional ``hil`` arm is the shaped arm with a simulated human watching the online episodes
and taking over when the policy goes wrong (HIL-SERL's setting). The optional ``watched`` arm
is the launch preset ``algorithm=filtered_bc_watched`` as ``limbic-train`` composes it (chunks
of 4, the pre-trained localiser, self-imitation, a simulated human stopping mistakes; limbic's
own simulator, pick-and-place or stack) with the bench's budget, seed and evaluation. Prints
held-out success against online episodes for each arm and ends with
``episodes_to_90=... success_at_150=... sparse_success_at_150=... bc_success=... minutes=...``
(and, with the hil arm, ``hil_episodes_to_90=... hil_success_at_150=... hil_human_share=...``;
with the watched arm, the same figures prefixed ``watched_``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import limbic.sim  # noqa: F401  (headless GL before mujoco loads)
from limbic.launch.components import RobotConfig
from limbic.launch.config import ConfigError
from limbic.policy.vla import PolicyConfig
from limbic.runtime.learn import LearnConfig, LearnResult, learn, plot_curves
from limbic.runtime.replay import RewardConfig
from limbic.sim.env import HIL_PICK_CUBE, SIM_ENVS, SimConfig
from limbic.teleop.arbiter import TAKEOVER_RULES, TakeoverConfig

DEFAULT_ARM_TASK = {"limbic": ("so101", "pick_place"), HIL_PICK_CUBE: ("panda", "pick_cube")}
"""Arm and task when ``--arm``/``--task`` are not given, per simulator."""
WATCHED_PRESET = "filtered_bc_watched"
"""The launch preset (``launch/conf/algorithm``) the ``watched`` arm runs."""


def preset_config(preset: str, base: LearnConfig) -> LearnConfig:
    """``limbic-train runtime=inprocess algorithm=<preset>`` on ``base``'s simulated arm and task,
    with ``base``'s demonstrations, online budget, evaluation, seed, threads and output."""
    from limbic.launch.compose import compose
    from limbic.launch.train import TrainConfig  # importing it registers train_schema

    sim = base.robot.sim
    overrides = [
        "runtime=inprocess",
        f"algorithm={preset}",
        f"robot.sim.env={sim.env}",
        f"robot.sim.arm={sim.arm}",
        f"robot.sim.task={sim.task}",
    ]
    preset_cfg = compose("train", overrides, TrainConfig).learn_config()
    return dataclasses.replace(
        preset_cfg,
        demos=base.demos,
        online_episodes=base.online_episodes,
        eval_every=base.eval_every,
        eval_episodes=base.eval_episodes,
        eval_split=base.eval_split,
        seed=base.seed,
        threads=base.threads,
        videos=base.videos,
        out_dir=base.out_dir,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the three arms and print the comparison."""
    p = argparse.ArgumentParser(prog="limbic-bench learn", description=__doc__.splitlines()[0])
    p.add_argument("--critic", default="", help="progress-critic checkpoint for the shaped arm")
    p.add_argument(
        "--env",
        default="limbic",
        choices=list(SIM_ENVS),
        help="simulator (gym_hil/PandaPickCube: gym-hil's env through limbic's adapter)",
    )
    p.add_argument("--task", default=None, help="default: pick_place (pick_cube on gym-hil)")
    p.add_argument("--arm", default=None, help="default: so101 (panda on gym-hil)")
    p.add_argument("--demos", type=int, default=20)
    p.add_argument("--episodes", type=int, default=150, help="online episodes per RL arm")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--utd", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--bc-steps", type=int, default=3000)
    p.add_argument(
        "--chunk-len",
        type=int,
        default=1,
        help="actions per inference; transitions become windows of this many steps",
    )
    p.add_argument(
        "--execute", type=int, default=0, help="actions executed per inference (0: the whole chunk)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--imitate-successes",
        action="store_true",
        help="RL arms: copy the policy's successful online episodes to the demonstrations",
    )
    p.add_argument(
        "--value-weight",
        type=float,
        default=None,
        help="RL arms: weight of the actor's value term (default: the agent's, 1)",
    )
    p.add_argument(
        "--takeover-rule",
        default="gap",
        choices=TAKEOVER_RULES,
        help="hil arm: when the simulated human takes over (gap: the policy's action differs "
        "from its own; mistakes: the arm is going wrong, pick-and-place and stack)",
    )
    p.add_argument(
        "--takeover-patience",
        type=int,
        default=TakeoverConfig.patience,
        help="hil arm: ticks of patience",
    )
    p.add_argument(
        "--takeover-anticipate",
        action="store_true",
        help="hil arm, mistakes rule: also stop jaws starting to close out of reach of the cube",
    )
    p.add_argument(
        "--takeover-stall-near",
        action="store_true",
        help="hil arm, mistakes rule: also stop an arm making no progress near the cube",
    )
    p.add_argument(
        "--arms",
        nargs="+",
        default=["bc", "sparse", "shaped"],
        choices=["bc", "sparse", "shaped", "hil", "watched"],
    )
    p.add_argument("--out", default="runs/bench_learn")
    args = p.parse_args(argv)
    if {"shaped", "hil"} & set(args.arms) and not args.critic:
        p.error("the shaped and hil arms need --critic (train one with limbic-train-critic)")

    default_arm, default_task = DEFAULT_ARM_TASK[args.env]
    args.arm, args.task = args.arm or default_arm, args.task or default_task
    try:
        sim = SimConfig(env=args.env, arm=args.arm, task=args.task)
        policy = PolicyConfig(chunk_len=args.chunk_len, execute=args.execute)
        takeover = TakeoverConfig(
            rule=args.takeover_rule,
            patience=args.takeover_patience,
            anticipate=args.takeover_anticipate,
            stall_near=args.takeover_stall_near,
        )
        if args.value_weight is not None:
            agent = dataclasses.replace(policy.agent, value_weight=args.value_weight)
            policy = dataclasses.replace(policy, agent=agent)
    except ConfigError as e:
        p.error(str(e))
    if "watched" in args.arms and (
        args.env != "limbic" or args.task not in ("pick_place", "stack")
    ):
        p.error(
            f"the watched arm runs algorithm={WATCHED_PRESET}: limbic's own simulator and "
            f"pick_place or stack, got --env {args.env} --task {args.task}"
        )
    base = LearnConfig(
        robot=RobotConfig(sim=sim),
        policy=policy,
        demos=args.demos,
        online_episodes=args.episodes,
        utd=args.utd,
        batch_size=args.batch_size,
        bc_pretrain_steps=args.bc_steps,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        seed=args.seed,
        videos=0,
        imitate_successes=args.imitate_successes,
    )
    arms = {
        "bc": dataclasses.replace(base, mode="bc", out_dir=f"{args.out}/bc"),
        "sparse": dataclasses.replace(
            base,
            reward=RewardConfig(task_weight=1.0, shaping_weight=0.0),
            out_dir=f"{args.out}/sparse",
        ),
        "shaped": dataclasses.replace(
            base, critic_checkpoint=args.critic, out_dir=f"{args.out}/shaped"
        ),
        "hil": dataclasses.replace(
            base,
            critic_checkpoint=args.critic,
            interventions=True,
            takeover=takeover,
            out_dir=f"{args.out}/hil",
        ),
    }
    if "watched" in args.arms:
        arms["watched"] = preset_config(
            WATCHED_PRESET, dataclasses.replace(base, out_dir=f"{args.out}/watched")
        )
    print(
        f"# learning: {args.env} {args.arm} {args.task}, {args.demos} demos, {args.episodes} online episodes, "
        f"eval on {args.eval_episodes} held-out episodes every {args.eval_every}, "
        f"chunk {args.chunk_len} (execute {policy.steps_per_inference}); RL arms: value weight "
        f"{policy.agent.value_weight}, self-imitation {'on' if args.imitate_successes else 'off'}"
    )
    results: dict[str, LearnResult] = {}
    started = time.monotonic()
    for name in args.arms:
        results[name] = learn(arms[name])
        r = results[name]
        print(f"\n{name}: {r.minutes:.1f} min, {r.updates} updates")
        print("  episodes  success  length  shaped_return  human_share  imitated")
        for e in r.curve:
            print(
                f"  {e.episodes:8d}  {e.success_rate:7.0%}  {e.mean_length:6.1f}  "
                f"{e.mean_shaped_return:13.2f}  {e.human_share:11.2f}  {e.imitated:8d}"
            )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    plot_curves({k: v.curve for k, v in results.items()}, Path(args.out) / "curves.png")
    print(
        f"\ncurves: {Path(args.out) / 'curves.png'}; total {(time.monotonic() - started) / 60:.1f} min"
    )
    print(summary_line(results, args.episodes))
    return 0


def summary_line(results: dict[str, LearnResult], episodes: int) -> str:
    """The benchmark's last line: the main RL arm's (shaped, else sparse) episodes to 90 % and
    success at the budget, the sparse and BC arms' success, its minutes; then the same figures,
    with the human's share, for the hil and watched arms that ran ("nan"/"none" where an arm
    did not run or never reached 90 %)."""

    def final(name: str) -> str:
        return f"{results[name].final_success:.2f}" if name in results else "nan"

    main_arm = "shaped" if "shaped" in results else "sparse" if "sparse" in results else None
    to_90 = results[main_arm].episodes_to(0.9) if main_arm else None
    minutes = results[main_arm].minutes if main_arm else float("nan")
    line = (
        f"episodes_to_90={to_90 if to_90 is not None else 'none'} "
        f"success_at_{episodes}={final(main_arm) if main_arm else 'nan'} "
        f"sparse_success_at_{episodes}={final('sparse')} bc_success={final('bc')} "
        f"minutes={minutes:.1f}"
    )
    for arm in ("hil", "watched"):
        if arm in results:
            r = results[arm]
            arm_90 = r.episodes_to(0.9)
            line += (
                f" {arm}_episodes_to_90={arm_90 if arm_90 is not None else 'none'}"
                f" {arm}_success_at_{episodes}={final(arm)}"
                f" {arm}_human_share={r.curve[-1].human_share:.2f} {arm}_minutes={r.minutes:.1f}"
            )
    return line
