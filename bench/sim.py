"""``limbic-bench sim``: simulation speed beside a bare MuJoCo loop, and the expert's success.

For each arm (2 views at 128x128 by default) it times the full env step — controller/IK,
physics, both renders, observation assembly, success check, resets — and, on the same model
and renderer in the same run, a bare loop of ``mj_step x substeps`` plus the same two
renders. Rounds alternate between the two so machine drift hits both alike. Then it runs
the scripted expert on every task over ``--seeds`` seeds. The last line is
``sim_ratio=<worst arm's env/bare ratio> ...``.
"""

from __future__ import annotations

import argparse
import time

import mujoco
import numpy as np

import limbic.sim  # noqa: F401  (chooses the headless GL backend before mujoco loads)
from limbic.sim.env import SimConfig, SimEnv
from limbic.sim.expert import ScriptedExpert
from limbic.sim.scene import CameraConfig
from limbic.sim.tasks import TASKS


def time_env(env: SimEnv, steps: int, rng: np.random.Generator) -> float:
    """Env steps per second under random in-bounds actions, resets included."""
    spec = env.action_spec
    actions = rng.uniform(spec.low, spec.high, size=(steps, spec.dim)).astype(np.float32)
    t0 = time.perf_counter()
    for a in actions:
        r = env.step(a)
        if r.terminated or r.truncated:
            env.reset()
    return steps / (time.perf_counter() - t0)


def time_bare(env: SimEnv, steps: int) -> float:
    """Steps per second of ``mj_step x substeps`` plus one render per view, nothing else."""
    m, d, r = env.model, env.data, env.renderer
    cams = [env.model.camera(c).id for c in (env._cameras[v] for v in env.views)]
    opt = env.scene_option
    t0 = time.perf_counter()
    for _ in range(steps):
        for _ in range(env.substeps):
            mujoco.mj_step(m, d)
        for cam in cams:
            r.update_scene(d, camera=cam, scene_option=opt)
            r.render()
    return steps / (time.perf_counter() - t0)


def speed(arm: str, task: str, camera: CameraConfig, steps: int, block: int) -> tuple[float, float]:
    """Env and bare steps/s, timed in short alternating blocks so load changes hit both alike."""
    env = SimEnv(SimConfig(arm=arm, task=task, camera=camera))
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    time_env(env, 20, rng)  # warm up renderer and caches
    time_bare(env, 20)
    env_s = bare_s = 0.0
    for i in range(max(1, steps // block)):
        env.reset(seed=i)
        env_s += block / time_env(env, block, rng)
        env.reset(seed=i)
        bare_s += block / time_bare(env, block)
    env.close()
    n = max(1, steps // block) * block
    return n / env_s, n / bare_s


def expert_success(arm: str, task: str, seeds: int, action: str) -> tuple[float, float]:
    """Success rate and mean episode length of the clean scripted expert over ``seeds`` seeds."""
    from limbic.sim.control import ActionConfig

    env = SimEnv(SimConfig(arm=arm, task=task, action=ActionConfig(kind=action)))
    expert = ScriptedExpert(env, seed=0)
    wins, lengths = 0, []
    for seed in range(seeds):
        env.reset(seed=seed)
        expert.reset()
        while True:
            r = env.step(expert.act())
            if r.terminated or r.truncated:
                break
        wins += int(r.success)
        lengths.append(env.t)
    env.close()
    return wins / seeds, float(np.mean(lengths))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print per-arm figures and the ``key=value`` summary line."""
    p = argparse.ArgumentParser(prog="limbic-bench sim", description=__doc__.splitlines()[0])
    p.add_argument("--arms", nargs="+", default=["so101", "panda"])
    p.add_argument("--task", default="pick_place", help="task whose scene is timed")
    p.add_argument("--size", type=int, default=128, help="image height and width")
    p.add_argument("--steps", type=int, default=1000, help="steps timed for each of env and bare")
    p.add_argument("--block", type=int, default=25, help="steps per alternating block")
    p.add_argument("--seeds", type=int, default=100, help="expert seeds per task and arm (0 skips)")
    p.add_argument("--action", default="ee_delta", choices=["ee_delta", "joint_delta"])
    args = p.parse_args(argv)

    camera = CameraConfig(height=args.size, width=args.size, views=("front", "wrist"))
    print(
        f"# sim speed: {args.task} scene, 2 views at {args.size}x{args.size}, "
        f"{args.steps} steps each, alternating blocks of {args.block}"
    )
    print(f"{'arm':8s} {'env steps/s':>12s} {'bare steps/s':>13s} {'ratio':>6s}")
    ratios = {}
    for arm in args.arms:
        env_rate, bare_rate = speed(arm, args.task, camera, args.steps, args.block)
        ratios[arm] = env_rate / bare_rate
        print(f"{arm:8s} {env_rate:12.1f} {bare_rate:13.1f} {ratios[arm]:6.3f}")

    worst_success = 1.0
    if args.seeds > 0:
        print(f"\n# scripted expert ({args.action}), {args.seeds} seeds per task")
        print(f"{'arm':8s} {'task':12s} {'success':>8s} {'mean len':>9s}")
        for arm in args.arms:
            for task in TASKS:
                rate, length = expert_success(arm, task, args.seeds, args.action)
                worst_success = min(worst_success, rate)
                print(f"{arm:8s} {task:12s} {rate:8.1%} {length:9.1f}")

    figures = [f"sim_ratio={min(ratios.values()):.3f}"]
    figures += [f"{arm}_ratio={r:.3f}" for arm, r in ratios.items()]
    if args.seeds > 0:
        figures.append(f"expert_min_success={worst_success:.2f}")
    print(" ".join(figures))
    return 0
