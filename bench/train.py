"""``limbic-bench train``: the asynchronous ``limbic-train`` job end to end, beside the in-process loop.

Runs ``limbic-train`` (server, learner, K actors as processes) on the default task, then, as
the baseline, the in-process loop on the same config and seeds. Prints both learning curves,
the actors' achieved rates and missed ticks, the weight lag (median delay from a weight
publication to the first action computed with it), the acting lag (median, over online
episodes, of the updates the learner had made beyond the weights that began the episode) and
ends with ``success=... episodes=... minutes=... weight_lag_s=... actor_hz=...`` (then the
missed ticks, the acting lag and the baseline's success and minutes). The job's learner and the
baseline run at ``nice`` (+10) below the caller, like ``limbic-train``'s learner: run the
benchmark itself at normal priority, or the control loops and the server compete at the
learner's. Extra arguments are ``limbic-train`` overrides::

    limbic-bench train                                    # the default job (long on a CPU)
    limbic-bench train --no-baseline task=reach online_episodes=50
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import limbic.sim  # noqa: F401  (headless GL before mujoco loads)
from limbic.launch.compose import compose, stop_event_on_signals
from limbic.launch.train import register_schema
from limbic.runtime.learn import learn
from limbic.runtime.supervisor import TrainConfig, run_train


def _curve(name: str, curve: list[dict]) -> None:
    print(f"\n{name}")
    print("  episodes  success  length  minutes")
    for e in curve:
        print(
            f"  {e['episodes']:8d}  {e['success_rate']:7.0%}  {e['mean_length']:6.1f}  {e['minutes']:7.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the job (and the baseline) and print the comparison."""
    p = argparse.ArgumentParser(prog="limbic-bench train", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_train", help="folder for both runs")
    p.add_argument("--no-baseline", action="store_true", help="skip the in-process loop")
    p.add_argument("overrides", nargs="*", help="limbic-train overrides (key=value)")
    args = p.parse_args(argv)
    register_schema()
    cfg = compose("train", list(args.overrides), TrainConfig)
    out = Path(args.out)
    cfg = dataclasses.replace(cfg, out_dir=str(out / "async"), runtime="async", resume=False)
    print(
        f"# limbic-train: {cfg.robot.sim.arm} {cfg.robot.sim.task}, {cfg.actors} actors at "
        f"{cfg.actor.control_hz:g} Hz, {cfg.demos} demos, {cfg.online_episodes} online episodes, utd {cfg.utd}, "
        f"eval on {cfg.eval_episodes} {cfg.eval_split} episodes every {cfg.eval_every}"
    )
    summary = run_train(cfg, stop_event_on_signals(), progress=cfg.progress)
    status = summary.status
    _curve(
        f"asynchronous ({summary.minutes:.1f} min, {status.get('updates', 0)} updates)",
        status.get("curve") or [],
    )
    print("\nactors")
    for a in summary.actors:
        print(
            f"  {a.actor_id}: {a.episodes} episodes, {a.steps} steps, {a.achieved_hz:.2f} Hz, missed ticks "
            f"{a.missed_ticks}, late actions {a.late_actions}, held {a.held_ticks}, chunks "
            f"{a.chunks} ({a.skipped_actions} actions skipped), round trip p50/p99 "
            f"{a.round_trips_text} ms"
        )
    lag = status.get("weight_lag_s")
    print(
        f"weight lag: median {lag if lag is not None else float('nan'):.3f} s over {status.get('weight_lag_samples', 0)} publications"
    )
    acting = status.get("acting_lag_updates")
    acting = float("nan") if acting is None else acting
    print(
        f"acting lag: median {acting:.0f} updates behind the learner's over "
        f"{status.get('acting_lag_samples', 0)} online episodes"
    )
    if summary.restarts and any(summary.restarts.values()):
        print(f"restarts: {summary.restarts}")
    base_success, base_minutes = float("nan"), float("nan")
    if not args.no_baseline and summary.finished:
        os.nice(cfg.nice)  # the baseline is training: as low a priority as the job's learner
        started = time.monotonic()
        base = learn(
            dataclasses.replace(
                cfg.learn_config(), out_dir=str(out / "inprocess"), progress=cfg.progress
            )
        )
        base_success, base_minutes = base.final_success, (time.monotonic() - started) / 60
        _curve(
            f"in-process baseline ({base_minutes:.1f} min, {base.updates} updates)",
            [dataclasses.asdict(e) for e in base.curve],
        )
    missed = sum(a.missed_ticks for a in summary.actors)
    print(
        f"success={summary.success:.2f} episodes={status.get('episodes', 0)} minutes={summary.minutes:.1f} "
        f"weight_lag_s={lag if lag is not None else float('nan'):.3f} actor_hz={summary.actor_hz:.2f} "
        f"missed_ticks={missed} acting_lag_updates={acting:.0f} baseline_success={base_success:.2f} "
        f"baseline_minutes={base_minutes:.1f}"
    )
    return 0 if summary.finished else 1
