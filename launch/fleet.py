"""``limbic-fleet``: a fleet of simulated actor loops on a Ray cluster.

    limbic-fleet fleet.size=4                                   # a local Ray instance, 4 actors
    limbic-fleet fleet.address=auto fleet.size=32 \\
        server=tcp://gpu-box:5555 learner=tcp://gpu-box:5557 task=reach   # an existing cluster

Each member is an ordinary actor loop (the keys of ``limbic.runtime.actor.ActorConfig`` are the
template) with its own actor id and seeds; it talks to the server and the learner over ZeroMQ.
Runs until every member has run ``episodes`` (0: until Ctrl-C or SIGTERM), then prints one line
per member and the fleet's totals.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from limbic.launch.config import ConfigError, to_object
from limbic.runtime.fleet import FleetConfig, FleetError

ConfigStore.instance().store(name="fleet_schema", node=FleetConfig)


@hydra.main(version_base=None, config_path="conf", config_name="fleet")
def _hydra_main(dcfg: DictConfig) -> None:
    from limbic.runtime.fleet import run_fleet

    try:
        cfg = to_object(dcfg, FleetConfig)
    except ConfigError as e:
        print(f"limbic-fleet: {e}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()

    def stop_on_signals(_fleet) -> None:
        # after ray.init, which installs its own SIGTERM handler (exit without cleanup)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())

    try:
        reports = run_fleet(cfg, stop, on_start=stop_on_signals)
    except FleetError as e:
        print(f"limbic-fleet: {e}", file=sys.stderr)
        sys.exit(1)
    for r in reports:
        print(r.summary())
    print(
        f"fleet: {len(reports)} of {cfg.fleet.size} actors reported, "
        f"{sum(r.episodes for r in reports)} episodes ({sum(r.successes for r in reports)} successes), "
        f"{sum(r.acked for r in reports)} acknowledged by the learner, "
        f"{sum(r.unacked for r in reports)} still in outboxes"
    )
    if len(reports) < cfg.fleet.size:
        sys.exit(1)


def main() -> None:
    """Console entry point."""
    _hydra_main()


if __name__ == "__main__":
    main()
