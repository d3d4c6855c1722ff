"""``limbic-learner``: receives episodes, trains, publishes weights to the server, checkpoints.

    limbic-learner [key=value ...]                 # launch/conf/learner.yaml with overrides
    limbic-learner --config FILE [key=value ...]   # a config file (limbic-train writes one)

    limbic-learner task=reach endpoint=tcp://0.0.0.0:5557 curve_secret_key=keys/learner.key_secret

It first records scripted demonstrations and pre-trains (or resumes from ``out_dir``'s
checkpoint), then writes ``<out_dir>/policy.pt``: serve it with
``limbic-serve served_policy@policy=vla policy.args.path=<out_dir>/policy.pt policy.args.explore=true``.
Ctrl-C or SIGTERM: stops receiving, finishes the episode being stored, checkpoints, and
finalises the datasets; the next start resumes.
"""

from __future__ import annotations

import logging
import sys

from limbic.launch.compose import load_or_compose, show, stop_event_on_signals
from limbic.launch.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``limbic-learner``."""
    import limbic.sim  # noqa: F401  (headless GL before mujoco loads)
    from limbic.runtime.learner import LearnerConfig, run_learner

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__ + "\ndefault config:\n\n" + show("learner", []))
        return 0
    try:
        cfg = load_or_compose("learner", argv, LearnerConfig)
    except ConfigError as e:
        print(f"limbic-learner: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    result = run_learner(cfg, stop_event_on_signals())
    state = "finished" if result.finished else "stopped (the next start resumes)"
    print(
        f"limbic-learner {state}: held-out success {result.final_success:.0%} after {result.updates} "
        f"updates, {result.minutes:.1f} min; checkpoint {result.out_dir / 'policy.pt'}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
