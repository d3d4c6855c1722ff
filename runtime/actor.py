"""``limbic-actor``: one arm's control loop, at a fixed rate, feeding the learner.

Each tick (default 10 Hz)::

    observation (timestamped) -> inference server (client + chunk broker) -> action
      -> intervention arbiter (policy or human) -> safety envelope -> arm
      -> transition: action applied, task reward, success, policy version, times

An action that is not there by the tick's deadline is dropped, never executed late: the
arm holds still (nothing is sent; in simulation time does not advance) and the tick counts
as a late action. So does a tick whose action came from weights older than
``min_policy_version`` (a server just restarted holds its initial weights until the learner
publishes again). A tick that starts after its slot because the previous one overran counts
as a missed tick. The loop logs every missed tick with where the time went (the previous
tick's phases and its CPU time, or a wait that woke late) and reports its real rate.

The progress critic, when the server hosts one, scores every new frame in a background
thread (potential ``phi`` and done probability per frame, DESIGN.md's incremental and
forward estimates fused), off the control path. Finished episodes go to the
:class:`~limbic.runtime.outbox.Outbox`, whose sender delivers them to the learner and keeps
them until acknowledged. Between episodes the actor waits while the server has no ready
policy, while the outbox is full, while more than ``max_unacked_episodes`` of its episodes wait
for a live learner to store them, or while the learner owes more than ``max_learner_backlog``
updates (so a slow learner is not flooded with stale data).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from limbic.contracts import Observation
from limbic.launch.components import RobotConfig, make_robot
from limbic.launch.config import require
from limbic.robot.base import EpisodicRobot
from limbic.robot.safety import ActionBoundsEnvelope, SafetyEnvelope
from limbic.runtime import auth
from limbic.runtime.chunking import FETCH_MODES, ActionChunkBroker, ChunkStarvationError
from limbic.runtime.client import InferenceClient, InferenceError
from limbic.runtime.episode_buffer import CriticTrack, EpisodeBuffer, TickClock
from limbic.runtime.outbox import EpisodeSender, Outbox, OutboxConfig
from limbic.runtime.protocol import encode_inline
from limbic.teleop.arbiter import InterventionArbiter, PolicyOnlyArbiter, TakeoverConfig

log = logging.getLogger(__name__)


@dataclass
class ActorConfig:
    """One actor loop: the arm, where the server and the learner are, the rate and budget."""

    actor_id: str = "actor-0"
    """Unique per arm: episode ids are ``<actor_id>-<sequence>``."""
    robot: RobotConfig = field(default_factory=RobotConfig)
    """The arm (``robot.type=sim``: a simulated arm and task)."""
    server: str = "tcp://127.0.0.1:5555"
    """The inference server's request endpoint."""
    learner: str = "tcp://127.0.0.1:5557"
    """The learner's episode endpoint; empty keeps episodes in the outbox (nobody to send to)."""
    control_hz: float = 10.0
    """Control rate (wall clock)."""
    action_deadline_s: float = 0.0
    """An action not there this long after the tick began is dropped; 0: 80 % of the period."""
    chunk_fetch: str = "auto"
    """How the next action chunk is fetched (``runtime/chunking.py``): ``inline`` (when the chunk
    runs out, ask with this tick's view and wait: every chunk runs from its first action, as the
    policy planned it and as evaluation runs it), ``prefetch`` (ask early, never wait, skip the
    actions already past: the first of every chunk at least), or ``auto``: inline while the
    worst recent round trip fits in the action deadline."""
    episodes: int = 0
    """Episodes to run, counted across restarts of this actor (0: until stopped)."""
    seed: int = 2_000_000
    """Episode ``k`` of this actor resets the scene with seed ``seed + k``."""
    split: str = "train"
    """Task split of the episodes."""
    min_policy_version: int = 1
    """Hold the arm while the server's policy is older (0 accepts the server's initial weights)."""
    critic: str = "auto"
    """Per-frame progress from the server's critic: ``auto`` (when served), ``on`` or ``off``."""
    image_format: str = "raw"
    """Frames sent to the inference server: ``raw`` or ``jpeg``."""
    max_learner_backlog: int = 0
    """Wait before an episode while the learner owes more updates than this (0: never wait)."""
    max_unacked_episodes: int = 0
    """Wait before an episode while more of this actor's episodes than this are unacknowledged
    by a learner that answers (0: never wait). The learner counts updates owed only for episodes
    it has stored, so a learner whose storing falls behind the arms looks caught up while the
    episodes queue in the actors' outboxes, and the arms act on weights trained without them. A
    learner that does not answer never stops the arm: the outbox keeps the episodes."""
    out_dir: str = "runs/actors"
    """Per-actor state (episode counter), spooled episodes and the final report go under here."""
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    """Unacknowledged episodes: memory bound, spool folder, re-send timing."""
    arbiter: str = "policy"
    """Intervention arbiter (a key of ``ARBITERS``): ``policy`` never intervenes, ``scripted``
    is the simulated human taking over when the policy goes wrong (sim robots only)."""
    takeover: TakeoverConfig = field(default_factory=TakeoverConfig)
    """When the ``scripted`` arbiter takes over."""
    watcher_jaw_gap_m: float | None = None
    """The gap the ``scripted`` arbiter's expert leaves at the fixed jaw when it grasps (None:
    the expert's default; ``limbic-train`` passes the demonstrator's ``demo_expert.jaw_gap_m``,
    so the corrections grasp where the demonstrations do)."""
    envelope: str = "bounds"
    """Safety envelope (a key of ``ENVELOPES``); ``bounds`` enforces the declared action bounds."""
    server_public_key: str = ""
    """The server's and learner's public CURVE key file, when they require CURVE."""
    client_secret_key: str = ""
    """This actor's ``.key_secret`` file for CURVE (empty: an ephemeral key pair)."""
    log_every_s: float = 30.0
    """How often the loop logs its rate and counters."""

    def __post_init__(self) -> None:
        require(self.actor_id.strip() != "", "actor.actor_id", "must not be empty")
        require(
            0 < self.control_hz <= 1000,
            "actor.control_hz",
            f"must be in (0, 1000], got {self.control_hz}",
        )
        require(self.action_deadline_s >= 0, "actor.action_deadline_s", "must be >= 0")
        require(
            self.chunk_fetch in FETCH_MODES,
            "actor.chunk_fetch",
            f"expected one of {list(FETCH_MODES)}, got {self.chunk_fetch!r}",
        )
        if self.action_deadline_s:
            require(
                self.action_deadline_s < 1.0 / self.control_hz,
                "actor.action_deadline_s",
                f"must be below the control period {1.0 / self.control_hz:.3f} s",
            )
        require(self.episodes >= 0, "actor.episodes", "must be >= 0")
        require(
            self.max_learner_backlog >= 0,
            "actor.max_learner_backlog",
            f"must be >= 0, got {self.max_learner_backlog}",
        )
        require(
            self.max_unacked_episodes >= 0,
            "actor.max_unacked_episodes",
            f"must be >= 0, got {self.max_unacked_episodes}",
        )
        require(
            self.critic in ("auto", "on", "off"),
            "actor.critic",
            f"expected auto, on or off, got {self.critic!r}",
        )
        require(
            self.image_format in ("raw", "jpeg"),
            "actor.image_format",
            f"expected raw or jpeg, got {self.image_format!r}",
        )
        require(
            self.arbiter in ARBITERS,
            "actor.arbiter",
            f"{self.arbiter!r} is not one of {sorted(ARBITERS)}",
        )
        require(
            self.envelope in ENVELOPES,
            "actor.envelope",
            f"{self.envelope!r} is not one of {sorted(ENVELOPES)}",
        )

    @property
    def period_s(self) -> float:
        """The control period."""
        return 1.0 / self.control_hz

    @property
    def deadline_s(self) -> float:
        """How long after a tick begins its action may arrive."""
        return self.action_deadline_s or 0.8 * self.period_s

    @property
    def home(self) -> Path:
        """This actor's folder (state, spool, report)."""
        return Path(self.out_dir) / self.actor_id


def _scripted_takeover(robot: Any, cfg: ActorConfig) -> InterventionArbiter:
    from limbic.sim.expert import ExpertConfig
    from limbic.sim.operator import ScriptedTakeover

    watcher = (
        ExpertConfig()
        if cfg.watcher_jaw_gap_m is None
        else ExpertConfig(jaw_gap_m=cfg.watcher_jaw_gap_m)
    )
    return ScriptedTakeover.for_robot(robot, cfg.takeover, watcher)


ARBITERS: dict[str, Any] = {
    "policy": lambda robot, cfg: PolicyOnlyArbiter(),
    "scripted": _scripted_takeover,
}
"""Arbiter name -> ``f(robot, actor config) -> InterventionArbiter``: ``policy`` never intervenes;
``scripted`` (simulation only) is the scripted expert taking over when the policy goes wrong;
the teleop issue adds human arbiters."""
ENVELOPES: dict[str, Any] = {"bounds": lambda robot: ActionBoundsEnvelope(robot.action_spec)}
"""Envelope name -> ``f(robot) -> SafetyEnvelope`` (the deployment issue adds real limits)."""


@dataclass
class ActorReport:
    """What an actor loop did, for logs, tests and ``limbic-bench train``."""

    actor_id: str
    episodes: int = 0
    """Episodes finished and handed to the outbox in this run."""
    successes: int = 0
    steps: int = 0
    """Actions applied to the arm."""
    ticks: int = 0
    """Control ticks inside episodes (steps plus ticks the arm was held)."""
    achieved_hz: float = 0.0
    """Ticks per second of ticking (time between episodes not counted)."""
    missed_ticks: int = 0
    """Tick slots lost because a tick started late (the loop overran)."""
    late_actions: int = 0
    """Actions that missed their deadline: dropped, the arm held still."""
    held_ticks: int = 0
    """Ticks the arm was held still (late actions, no server, policy not ready)."""
    chunks: int = 0
    """Action chunks the arm ran."""
    skipped_actions: int = 0
    """Actions of those chunks skipped as already past when they arrived (prefetching)."""
    round_trip_ms: list[float] = field(default_factory=list)
    """Median and 99th percentile of the server round trips of the last 2000 chunk requests."""
    critic_misses: int = 0
    """Frames whose progress judgement failed (potential carried over)."""
    acked: int = 0
    """Episodes the learner acknowledged in this run."""
    unacked: int = 0
    """Episodes still in the outbox at the end (spooled to disk when there is a spool)."""
    episode_ids: list[str] = field(default_factory=list)
    """Ids of the finished episodes, in order."""
    first_action_ns: dict[int, int] = field(default_factory=dict)
    """Wall time each policy version first produced an applied action."""
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def round_trips_text(self) -> str:
        """``p50/p99`` of :attr:`round_trip_ms` in whole milliseconds, ``-`` before any."""
        return "/".join(f"{t:.0f}" for t in self.round_trip_ms) or "-"

    def summary(self) -> str:
        """One line for logs."""
        return (
            f"{self.actor_id}: {self.episodes} episodes ({self.successes} successes), {self.steps} steps, "
            f"{self.achieved_hz:.2f} Hz, missed ticks {self.missed_ticks}, late actions {self.late_actions}, "
            f"held {self.held_ticks}, chunks {self.chunks} ({self.skipped_actions} actions skipped), "
            f"round trip p50/p99 {self.round_trips_text} ms, "
            f"acked {self.acked}, unacked {self.unacked}"
        )


class _ActorState:
    """The next episode number, persisted so a restarted actor never reuses an episode id."""

    def __init__(self, path: Path):
        self.path = path
        self.next_seq = 0
        if path.exists():
            self.next_seq = int(json.loads(path.read_text())["next_seq"])

    def advance(self) -> None:
        self.next_seq += 1
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"next_seq": self.next_seq}))
        os.replace(tmp, self.path)


class _PolicyNotReadyError(Exception):
    """The server answered with weights older than ``min_policy_version``."""


class ActorLoop:
    """The pieces of one actor run; :func:`run_actor` drives it."""

    def __init__(self, cfg: ActorConfig, stop: threading.Event):
        self.cfg, self.stop = cfg, stop
        self.report = ActorReport(cfg.actor_id)
        cfg.home.mkdir(parents=True, exist_ok=True)
        self.state = _ActorState(cfg.home / "state.json")
        server_key = auth.load_public_key(cfg.server_public_key) if cfg.server_public_key else None
        self.robot = make_robot(cfg.robot)
        self.client = InferenceClient(
            cfg.server,
            timeout_s=cfg.deadline_s,
            image_format=cfg.image_format,
            name=cfg.actor_id,
            heartbeat_interval_s=0,
            server_public_key=server_key,
            client_secret_key=cfg.client_secret_key or None,
        )
        self.broker = ActionChunkBroker(
            self._infer, cfg.period_s, timeout_s=cfg.deadline_s, fetch=cfg.chunk_fetch
        )
        spool = cfg.outbox.spool_dir or str(cfg.home / "outbox")
        self.outbox = Outbox(spool, cfg.outbox.memory_episodes, cfg.outbox.max_episodes)
        # An episode spooled just before a crash that came before the counter advanced: go past it.
        for episode_id in self.outbox.ids():
            prefix, _, seq = episode_id.rpartition("-")
            if prefix == cfg.actor_id and seq.isdigit():
                self.state.next_seq = max(self.state.next_seq, int(seq) + 1)
        self.sender = (
            EpisodeSender(
                self.outbox,
                cfg.learner,
                cfg.actor_id,
                cfg.outbox,
                server_public_key=server_key,
                client_secret_key=cfg.client_secret_key or None,
            )
            if cfg.learner
            else None
        )
        self.critic: CriticTrack | None = None
        self.arbiter: InterventionArbiter | None = None
        self.envelope: SafetyEnvelope | None = None
        self.clock = TickClock(cfg.period_s, stop)

    def _infer(self, obs: Observation) -> tuple[np.ndarray, tuple[int, int]]:
        reply = self.client.act(obs)
        if reply.policy_version < self.cfg.min_policy_version:
            raise _PolicyNotReadyError(reply.policy_version)
        return reply.actions, (reply.policy_version, time.time_ns())

    # ------------------------------------------------------------ set-up and waiting

    def open(self) -> None:
        self.robot.connect()
        if not isinstance(self.robot, EpisodicRobot):
            raise TypeError(
                f"{type(self.robot).__name__} cannot frame episodes (start_episode/instruction/success)"
            )
        self.arbiter = ARBITERS[self.cfg.arbiter](self.robot, self.cfg)
        self.envelope = ENVELOPES[self.cfg.envelope](self.robot)
        if self.sender is not None:
            self.sender.start()

    def close(self) -> None:
        for step in (self.broker.close, self.client.close):
            step()
        if self.critic is not None:
            self.critic.close()
        if self.arbiter is not None:
            self.arbiter.close()
        if self.sender is not None:
            # Give the learner a moment for what is in flight, then keep the rest on disk.
            self.outbox.wait_empty(2.0 if not self.stop.is_set() else 0.5)
            self.sender.stop()
        self.outbox.spill_all()
        self.robot.disconnect()

    def _wait(self, why: str, ready) -> bool:
        """Wait (checking ``stop``) until ``ready()``; log what the actor waits for once."""
        logged = False
        while not self.stop.is_set():
            if ready():
                return True
            if not logged:
                log.info("%s: waiting for %s", self.cfg.actor_id, why)
                logged = True
            self.stop.wait(0.2)
        return False

    def _server_ready(self) -> bool:
        try:
            beat = self.client.ping(timeout_s=max(self.cfg.deadline_s, 0.5))
        except InferenceError:
            return False
        if self.critic is None and self.client.info is not None:
            served = self.client.info.critic is not None
            if self.cfg.critic == "on" and not served:
                raise RuntimeError("actor.critic=on but the server hosts no progress critic")
            if served and self.cfg.critic != "off":
                spec = self.client.info.critic
                self.critic = CriticTrack(self.client, spec.views, timeout_s=1.0)
        return beat.policy_version >= self.cfg.min_policy_version

    def _learner_ready(self) -> bool:
        if self.sender is not None and self.sender.error is not None:
            raise RuntimeError("the episode sender failed") from self.sender.error
        if self.outbox.full:
            return False
        status = self.sender.status if self.sender is not None else None
        if status is None or not self.sender.learner_alive:
            return True  # a learner that is away does not stop acting; the outbox keeps episodes
        unacked = self.cfg.max_unacked_episodes
        if unacked and len(self.outbox) > unacked:
            return False
        limit = self.cfg.max_learner_backlog
        return not limit or status.backlog_updates <= limit

    # ------------------------------------------------------------ one episode

    def episode(self, seq: int) -> bool:
        """Run episode ``seq``; True when it finished (False: stopped part-way, dropped)."""
        cfg, robot = self.cfg, self.robot
        seed = cfg.seed + seq
        obs = robot.start_episode(seed=seed, split=cfg.split)
        self.broker.reset()
        self.arbiter.on_episode_start(obs)
        self.envelope.on_episode_start(obs)
        views = tuple(obs.images)
        buf = EpisodeBuffer(views)
        buf.frame(obs)
        if self.critic is not None:
            self.critic.start(obs)
        success = False
        while len(buf) < robot.step_limit:
            if self.stop.is_set():
                self.clock.pause()
                return False
            self.clock.begin()
            tick_ns = time.time_ns()
            obs = robot.get_observation()
            self.clock.mark("observe")
            try:
                policy_action = self.broker.act(obs)
                version, action_ns = self.broker.chunk_meta
                self.clock.mark("act")
            except (InferenceError, ChunkStarvationError, _PolicyNotReadyError) as e:
                self.broker.reset()  # never execute a late chunk later
                self.report.held_ticks += 1
                if not isinstance(e, _PolicyNotReadyError):
                    self.report.late_actions += 1
                    buf.late_ticks += 1
                    log.info(
                        "%s: no action within %.0f ms (%s): arm held still",
                        cfg.actor_id,
                        cfg.deadline_s * 1e3,
                        type(e).__name__,
                    )
                continue
            action, intervened = self.arbiter.choose(obs, policy_action)
            sent = robot.send_action(self.envelope.filter(obs, action))
            success = bool(robot.success())
            self.clock.mark("step")
            if version not in self.report.first_action_ns:
                self.report.first_action_ns[version] = action_ns
            buf.step(
                action=sent,
                reward=float(success),
                success=success,
                terminated=success,
                intervention=bool(intervened),
                policy_version=-1 if intervened else version,
                tick_ns=tick_ns,
                action_ns=action_ns,
            )
            self.report.steps += 1
            nxt = robot.get_observation()
            self.clock.mark("observe next")
            buf.frame(nxt)
            if self.critic is not None:
                self.critic.add(nxt)
            if success:
                break
        self.clock.pause()
        phi, done = (
            self.critic.finish()
            if self.critic is not None
            else (np.zeros(len(buf) + 1, np.float32),) * 2
        )
        episode_id = f"{cfg.actor_id}-{seq:06d}"
        message = buf.upload(
            episode_id, cfg.actor_id, seq, robot.instruction, seed, cfg.split, phi, done
        )
        self.outbox.put(
            episode_id,
            encode_inline(
                message, image_format=cfg.outbox.image_format, jpeg_quality=cfg.outbox.jpeg_quality
            ),
        )
        self.state.advance()
        self.report.episodes += 1
        self.report.successes += int(success)
        self.report.episode_ids.append(episode_id)
        return True

    def run(self) -> ActorReport:
        cfg, report = self.cfg, self.report
        started = time.monotonic()
        last_log = started
        while not self.stop.is_set():
            seq = self.state.next_seq
            if cfg.episodes and seq >= cfg.episodes:
                break
            if not self._wait(
                f"a policy of version >= {cfg.min_policy_version} on {cfg.server}",
                self._server_ready,
            ):
                break
            if not self._wait("the learner (outbox full or learner backlog)", self._learner_ready):
                break
            if not self.episode(seq):
                break
            if time.monotonic() - last_log > cfg.log_every_s:
                last_log = time.monotonic()
                self._fill_report(started)
                log.info(report.summary())
        report.interrupted = self.stop.is_set()
        if self.sender is not None and not self.stop.is_set():
            self._wait("the learner to acknowledge every episode", lambda: len(self.outbox) == 0)
        self._fill_report(started)
        return report

    def _fill_report(self, started: float) -> None:
        r, clock = self.report, self.clock
        r.ticks = clock.ticks
        r.missed_ticks = clock.missed
        r.achieved_hz = clock.achieved_hz
        r.critic_misses = self.critic.misses if self.critic is not None else 0
        r.chunks = self.broker.chunks_used
        r.skipped_actions = self.broker.skipped_actions
        r.round_trip_ms = self.broker.round_trip_ms()
        r.acked = self.outbox.acked
        r.unacked = len(self.outbox)
        r.seconds = time.monotonic() - started


def run_actor(cfg: ActorConfig, stop: threading.Event | None = None) -> ActorReport:
    """Run one actor loop until ``stop`` is set or its episode budget is done; return its report.

    With a budget, the actor also waits (until ``stop``) for the learner to acknowledge every
    episode before returning. Episodes still unacknowledged at the end stay in the spool
    folder and are re-sent by the next run of the same actor. The report is also written to
    ``<out_dir>/<actor_id>/report.json``.
    """
    stop = stop or threading.Event()
    loop = ActorLoop(cfg, stop)
    try:
        loop.open()
        report = loop.run()
    finally:
        loop.close()
    report.unacked = len(loop.outbox)
    report.acked = loop.outbox.acked
    (cfg.home / "report.json").write_text(json.dumps(asdict(report), indent=1))
    log.info(report.summary())
    return report


__all__ = ["ARBITERS", "ENVELOPES", "ActorConfig", "ActorReport", "run_actor"]
