"""A fleet of simulated actor loops placed on a Ray cluster.

Each member is a Ray actor that runs one ordinary actor loop (:func:`limbic.runtime.actor.run_actor`)
with its own actor id and seed, on whichever node Ray gives it. Members talk to the inference
server and the learner over ZeroMQ exactly as a hand-started ``limbic-actor`` does: Ray only
places, starts and stops them and brings back their reports. No observation, episode or weight
goes through Ray; configs go out and reports come back as plain data.

    fleet = ActorFleet(FleetConfig(size=8, address="auto", server="tcp://gpu-box:5555", ...))
    with fleet:                 # start: place the members, wait until every one runs
        reports = fleet.wait()  # until each has run its episode budget (or Ctrl-C)
                                # leaving the block stops the members and collects their reports

With ``address=""`` the fleet starts a Ray instance of its own on this machine (and shuts it
down afterwards); ``address="auto"`` joins the cluster this machine belongs to (``ray start``);
``ray://head:10001`` connects through Ray Client.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from limbic.launch.config import require, to_object
from limbic.runtime.actor import ActorConfig, ActorReport, run_actor

log = logging.getLogger(__name__)

ActorRun = Callable[[ActorConfig, threading.Event], ActorReport]
"""What a member runs: :func:`run_actor`'s signature."""

PLACEMENTS = ("spread", "pack")


class FleetError(RuntimeError):
    """The fleet could not start, a member failed, or the cluster cannot reach the servers."""


@dataclass
class FleetSettings:
    """How many actors, on which Ray cluster, with what share of each node."""

    size: int = 2
    """Actor loops in the fleet."""
    address: str = ""
    """Ray cluster: empty starts a local Ray instance; ``auto`` joins this machine's cluster;
    ``ray://host:10001`` uses Ray Client."""
    local_cpus: int = 0
    """CPUs a local Ray instance offers (0: all of this machine's)."""
    cpus_per_actor: float = 1.0
    """CPUs Ray reserves per member (the loop, its renderer and its critic thread)."""
    gpus_per_actor: float = 0.0
    """GPU share per member (EGL rendering on a GPU node); 0 renders on the CPU."""
    placement: str = "spread"
    """``spread`` members over the nodes, or ``pack`` them onto as few as fit."""
    seed_stride: int = 100_000
    """Member ``k`` resets its scenes from seed ``seed + k * seed_stride`` (disjoint layouts)."""
    start_timeout_s: float = 300.0
    """Every member must be placed and running within this time (a cluster short of CPUs fails here)."""
    stop_timeout_s: float = 60.0
    """After a stop, members get this long to finish their episode and hand over; then they are killed."""

    def __post_init__(self) -> None:
        require(self.size >= 1, "fleet.size", f"must be >= 1, got {self.size}")
        require(self.local_cpus >= 0, "fleet.local_cpus", f"must be >= 0, got {self.local_cpus}")
        require(
            self.cpus_per_actor > 0,
            "fleet.cpus_per_actor",
            f"must be > 0, got {self.cpus_per_actor}",
        )
        require(
            self.gpus_per_actor >= 0,
            "fleet.gpus_per_actor",
            f"must be >= 0, got {self.gpus_per_actor}",
        )
        require(
            self.placement in PLACEMENTS,
            "fleet.placement",
            f"{self.placement!r} is not one of {list(PLACEMENTS)}",
        )
        require(self.seed_stride >= 1, "fleet.seed_stride", f"must be >= 1, got {self.seed_stride}")
        require(self.start_timeout_s > 0, "fleet.start_timeout_s", "must be > 0")
        require(self.stop_timeout_s > 0, "fleet.stop_timeout_s", "must be > 0")


@dataclass
class FleetConfig(ActorConfig):
    """One actor loop's config (the template every member starts from) plus the fleet's settings.

    Member ``k`` is the template with ``actor_id = f"{actor_id}-{k}"`` and
    ``seed = seed + k * fleet.seed_stride``.
    """

    fleet: FleetSettings = field(default_factory=FleetSettings)

    def member(self, k: int) -> ActorConfig:
        """The config of member ``k``."""
        require(
            0 <= k < self.fleet.size,
            "fleet.size",
            f"member {k} is outside a fleet of {self.fleet.size}",
        )
        template = {f.name: getattr(self, f.name) for f in fields(ActorConfig)}
        return replace(
            ActorConfig(**template),
            actor_id=f"{self.actor_id}-{k}",
            seed=self.seed + k * self.fleet.seed_stride,
        )


class _Member:
    """The Ray actor behind one fleet member: runs the loop in one call, stops it from another."""

    def __init__(self, cfg: dict[str, Any], run: ActorRun):
        # plain data over Ray, typed and validated again here
        self.cfg = to_object(cfg, ActorConfig)
        self.run_fn = run
        self.stop_event = threading.Event()

    def where(self) -> dict[str, Any]:
        """Which node and process this member runs in."""
        import ray

        return {"node": ray.util.get_node_ip_address(), "pid": os.getpid()}

    def run(self) -> dict[str, Any]:
        """Run the actor loop until its budget is done or :meth:`stop`; its report as plain data."""
        return asdict(self.run_fn(self.cfg, self.stop_event))

    def stop(self) -> None:
        """Ask the loop to stop at the next tick."""
        self.stop_event.set()


@dataclass
class MemberHandle:
    """The driver's view of one member."""

    actor_id: str
    actor: Any
    """The Ray actor handle."""
    result: Any = None
    """The ObjectRef of its running ``run`` call."""
    node: str = ""
    pid: int = 0
    report: ActorReport | None = None
    error: str = ""


class ActorFleet:
    """Places ``cfg.fleet.size`` actor loops on Ray, waits for them, stops them, collects their reports."""

    def __init__(self, cfg: FleetConfig, run: ActorRun = run_actor):
        self.cfg = cfg
        self.run_fn = run
        self.members: list[MemberHandle] = []
        self._owns_ray = False
        self._stopping = threading.Event()

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ActorFleet:
        """Connect to (or start) Ray, place every member and wait until each one runs."""
        import ray

        s = self.cfg.fleet
        if not ray.is_initialized():
            if s.address:
                ray.init(address=s.address, configure_logging=False)
            else:
                ray.init(
                    num_cpus=s.local_cpus or None, include_dashboard=False, configure_logging=False
                )
                self._owns_ray = True
        try:
            self._check_reachable()
            remote = ray.remote(_Member).options(
                num_cpus=s.cpus_per_actor,
                num_gpus=s.gpus_per_actor,
                max_concurrency=2,  # `run` blocks; `stop` must still get through
                max_restarts=0,
                scheduling_strategy="SPREAD" if s.placement == "spread" else "DEFAULT",
            )
            for k in range(s.size):
                cfg = self.cfg.member(k)
                handle = remote.remote(asdict(cfg), self.run_fn)
                self.members.append(MemberHandle(cfg.actor_id, handle))
            self._wait_started(s.start_timeout_s)
            for m in self.members:
                m.result = m.actor.run.remote()
        except BaseException:
            self.stop()
            raise
        log.info(
            "fleet of %d actors on %s",
            len(self.members),
            ", ".join(sorted({f"{m.node}" for m in self.members})),
        )
        return self

    def _check_reachable(self) -> None:
        """On more than one node, members elsewhere cannot reach a loopback server or learner."""
        import ray

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if len(nodes) <= 1:
            return
        for key in ("server", "learner"):
            endpoint = getattr(self.cfg, key)
            host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0]
            if host in ("127.0.0.1", "localhost", "::1", "[::1]"):
                raise FleetError(
                    f"config {key}: {endpoint!r} is a loopback address but the Ray cluster has "
                    f"{len(nodes)} nodes; give the address the other nodes reach it at "
                    "(and bind it there: the server's and learner's bind setting)"
                )

    def _wait_started(self, timeout_s: float) -> None:
        import ray

        pending = {m.actor.where.remote(): m for m in self.members}
        deadline = time.monotonic() + timeout_s
        while pending:
            ready, _ = ray.wait(
                list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic())
            )
            if not ready:
                names = ", ".join(m.actor_id for m in pending.values())
                cpus = ray.available_resources().get("CPU", 0.0)
                raise FleetError(
                    f"{len(pending)} of {len(self.members)} fleet members not running after "
                    f"{timeout_s:.0f} s ({names}); each asks for "
                    f"{self.cfg.fleet.cpus_per_actor:g} CPUs and {self.cfg.fleet.gpus_per_actor:g} GPUs, "
                    f"the cluster has {cpus:g} CPUs free (fleet.size, fleet.cpus_per_actor)"
                )
            m = pending.pop(ready[0])
            try:
                where = ray.get(ready[0])
            except Exception as e:  # the member's constructor failed (bad config, import error)
                raise FleetError(f"fleet member {m.actor_id} failed to start: {e}") from None
            m.node, m.pid = where["node"], where["pid"]

    def wait(
        self, timeout_s: float | None = None, stop: threading.Event | None = None
    ) -> list[ActorReport]:
        """Wait for every member's loop to end (episode budgets done, or stopped); their reports.

        Returns early, with the reports so far, once ``stop`` is set (then :meth:`stop` the
        fleet). Raises :class:`FleetError` naming the member when one fails, after stopping
        the rest; :class:`TimeoutError` when ``timeout_s`` passes first (members keep running).
        """
        import ray

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        running = {m.result: m for m in self.members if m.report is None and not m.error}
        while running and not (stop is not None and stop.is_set()):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            # short waits so a Ctrl-C reaches this thread promptly
            ready, _ = ray.wait(
                list(running), num_returns=1, timeout=1.0 if left is None else min(left, 1.0)
            )
            if not ready:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"{len(running)} fleet members still running")
                continue
            m = running.pop(ready[0])
            self._collect(m, ready[0])
            if m.error:
                self.stop()
                raise FleetError(f"fleet member {m.actor_id} failed: {m.error}")
        return self.reports()

    def _collect(self, m: MemberHandle, ref: Any) -> None:
        import ray

        try:
            m.report = ActorReport(**ray.get(ref))
        except Exception as e:  # the loop raised, or its process died
            m.error = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            log.error("fleet member %s failed: %s", m.actor_id, e)

    def request_stop(self) -> None:
        """Ask every member to stop at its next tick (safe from a signal handler's thread)."""
        for m in self.members:
            try:
                m.actor.stop.remote()
            except Exception as e:  # a member that is gone already
                log.warning("fleet member %s: stop not delivered: %s", m.actor_id, e)

    def stop(self) -> list[ActorReport]:
        """Stop every member, wait ``stop_timeout_s`` for their reports, kill stragglers, release Ray."""
        import ray

        if self._stopping.is_set():
            return self.reports()
        self._stopping.set()
        try:
            self.request_stop()
            running = {
                m.result: m
                for m in self.members
                if m.result is not None and m.report is None and not m.error
            }
            deadline = time.monotonic() + self.cfg.fleet.stop_timeout_s
            while running and time.monotonic() < deadline:
                ready, _ = ray.wait(
                    list(running), num_returns=1, timeout=max(0.0, deadline - time.monotonic())
                )
                for ref in ready:
                    self._collect(running.pop(ref), ref)
            for m in running.values():
                m.error = f"did not stop within {self.cfg.fleet.stop_timeout_s:.0f} s; killed"
                log.error("fleet member %s %s", m.actor_id, m.error)
            for m in self.members:
                ray.kill(m.actor, no_restart=True)
        finally:
            if self._owns_ray:
                ray.shutdown()
                self._owns_ray = False
        return self.reports()

    def reports(self) -> list[ActorReport]:
        """The reports collected so far, in member order."""
        return [m.report for m in self.members if m.report is not None]

    def __enter__(self) -> ActorFleet:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def run_fleet(
    cfg: FleetConfig,
    stop: threading.Event | None = None,
    on_start: Callable[[ActorFleet], None] | None = None,
) -> list[ActorReport]:
    """Start the fleet, wait until every member is done (or ``stop`` is set), stop it; the reports.

    ``on_start`` runs once every member runs (Ray is up by then: a launcher installs its
    signal handlers there, over the ones ``ray.init`` installs).
    """
    fleet = ActorFleet(cfg)
    with fleet:
        if on_start is not None:
            on_start(fleet)
        fleet.wait(stop=stop)
    return fleet.reports()
