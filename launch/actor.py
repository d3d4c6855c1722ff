"""``limbic-actor``: one arm's control loop, sending episodes to a learner.

    limbic-actor [key=value ...]                 # launch/conf/actor.yaml with overrides
    limbic-actor --config FILE [key=value ...]   # a config file (limbic-train writes one per actor)

    limbic-actor actor_id=arm-2 server=tcp://gpu-box:5555 learner=tcp://gpu-box:5557 \\
        server_public_key=keys/server.key episodes=50

Ctrl-C or SIGTERM stops after the current tick: the unfinished episode is dropped, episodes
not yet acknowledged stay in the spool folder and are re-sent by the next run.
"""

from __future__ import annotations

import logging
import sys

from limbic.launch.compose import load_or_compose, show, stop_event_on_signals
from limbic.launch.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``limbic-actor``."""
    import limbic.sim  # noqa: F401  (headless GL before mujoco loads)
    from limbic.runtime.actor import ActorConfig, run_actor

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__ + "\ndefault config:\n\n" + show("actor", []))
        return 0
    try:
        cfg = load_or_compose("actor", argv, ActorConfig)
    except ConfigError as e:
        print(f"limbic-actor: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    report = run_actor(cfg, stop_event_on_signals())
    print(report.summary(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
