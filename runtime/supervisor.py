"""``limbic-train``'s job: a server, a learner and K simulated actors as child processes.

One machine, one command. The supervisor writes each child's config to
``<out_dir>/configs/`` (the same files start any of them alone: ``limbic-learner --config
...``), starts the learner and the actors at once and the server once the learner's set-up
has written ``policy.pt``, shows one progress bar fed by the learner's ``status.json``, and
restarts a child that crashes (the learner resumes from its checkpoint; actors re-send what
the learner had not acknowledged). It ends when the learner has trained on its episode budget
and evaluated, or on Ctrl-C / SIGTERM: actors first (they stop after the current tick and keep
their unacknowledged episodes on disk), then the learner (it checkpoints and finalises its
datasets), then the server. Children get their own process groups, so a terminal's Ctrl-C
reaches only the supervisor, which stops them in that order; if the supervisor dies, the
kernel sends them SIGTERM.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tqdm import tqdm

from limbic.launch.compose import write_config
from limbic.launch.config import require
from limbic.runtime.actor import ActorConfig, ActorReport
from limbic.runtime.backends import EncoderConfig, ModelConfig
from limbic.runtime.evaluation import format_cells, format_localiser, format_outcomes
from limbic.runtime.learn import LearnConfig
from limbic.runtime.learner import CHECKPOINT, STATUS, LearnerConfig
from limbic.runtime.outbox import OutboxConfig
from limbic.runtime.ports import free_port
from limbic.runtime.server import ServeConfig, ServerConfig

log = logging.getLogger(__name__)

ONLINE_SEED = 2_000_000
SENTENCE_ENCODER = "limbic.policy.encoders.language:SentenceInstructionEncoder"
RUN_ARTIFACTS = (
    "policy.pt",
    "status.json",
    "curve.json",
    "curve.png",
    "weights.jsonl",
    "replay",
    "datasets",
    "actors",
    "logs",
    "configs",
)
"""What a fresh run clears in ``out_dir`` (nothing else there is touched)."""


@dataclass
class ActorSettings:
    """What every simulated actor of ``limbic-train`` shares."""

    control_hz: float = 10.0
    """Control rate (wall clock)."""
    action_deadline_s: float = 0.0
    """Later actions are dropped (0: 80 % of the control period)."""
    chunk_fetch: str = "auto"
    """How actors fetch the next action chunk: ``auto``, ``inline`` or ``prefetch``
    (``ActorConfig.chunk_fetch``)."""
    max_learner_backlog: int = 200
    """Wait between episodes while the learner owes more updates than this (0: never)."""
    max_unacked_episodes: int = 1
    """Wait between episodes while more of the actor's episodes than this wait for the learner to
    store them (0: never; ``ActorConfig.max_unacked_episodes``)."""
    min_policy_version: int = 1
    """Hold the arm until the learner has published weights at least this new."""
    critic: str = "auto"
    """Per-frame progress from the served critic (served when ``critic_checkpoint`` is set)."""
    image_format: str = "raw"
    """Frames to the server: ``raw`` or ``jpeg``."""
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    """Unacknowledged episodes: memory bound, spool, re-send timing."""


@dataclass
class TrainConfig(LearnerConfig):
    """``limbic-train``: the learning settings (as the in-process loop) plus the processes."""

    runtime: str = "async"
    """``async``: server, learner and actors as processes; ``inprocess``: the single-process loop."""
    actors: int = 2
    """Simulated actors (K)."""
    actor: ActorSettings = field(default_factory=ActorSettings)
    """Settings every actor shares."""
    server: ServerConfig = field(
        default_factory=lambda: ServerConfig(
            endpoint="tcp://127.0.0.1:0", weights_endpoint="tcp://127.0.0.1:0"
        )
    )
    """The inference server's endpoints and batching (port 0: a free port)."""
    device: str = "auto"
    """The server's device (``auto``: CUDA when present)."""
    max_restarts: int = 3
    """Restarts allowed per child after a crash."""
    stop_timeout_s: float = 180.0
    """How long a child may take to stop cleanly before it is killed."""
    resume: bool = False
    """Continue the run in ``out_dir`` (else clear its previous run's files first)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.runtime in ("async", "inprocess"),
            "runtime",
            f"expected async or inprocess, got {self.runtime!r}",
        )
        require(self.actors >= 1, "actors", f"must be >= 1, got {self.actors}")
        require(
            self.runtime == "inprocess" or not self.layout_focus,
            "layout_focus",
            "the layout curriculum places the in-process loop's episodes only; "
            "use runtime=inprocess or layout_focus=0",
        )
        require(
            self.runtime == "inprocess" or not self.online_goal_moves,
            "online_goal_moves",
            "re-rendering an online episode needs the simulator that played it, which only the "
            "in-process loop keeps; use runtime=inprocess or online_goal_moves=0",
        )
        require(self.max_restarts >= 0, "max_restarts", "must be >= 0")

    def learn_config(self) -> LearnConfig:
        """The same run as the in-process loop's config."""
        return LearnConfig(**{f.name: getattr(self, f.name) for f in fields(LearnConfig)})


@dataclass
class TrainSummary:
    """What a ``limbic-train`` run produced (also what ``limbic-bench train`` reports)."""

    out_dir: Path
    finished: bool
    status: dict[str, Any]
    actors: list[ActorReport]
    minutes: float
    restarts: dict[str, int]

    @property
    def success(self) -> float:
        curve = self.status.get("curve") or []
        return float(curve[-1]["success_rate"]) if curve else float("nan")

    @property
    def actor_hz(self) -> float:
        rates = [a.achieved_hz for a in self.actors if a.achieved_hz > 0]
        return sum(rates) / len(rates) if rates else float("nan")


def free_endpoint(endpoint: str, chosen: set[str] | None = None) -> str:
    """``endpoint`` with port 0 replaced by a free port of its host (outside the ephemeral
    range, so no outgoing connection takes it before the child binds it), and not one of
    ``chosen`` (endpoints picked before it and not bound yet), to which it is added."""
    url = urlparse(endpoint)
    if url.scheme != "tcp" or url.port != 0:
        return endpoint
    chosen = set() if chosen is None else chosen
    while (picked := f"tcp://{url.hostname}:{free_port(url.hostname)}") in chosen:
        pass
    chosen.add(picked)
    return picked


def _die_with_parent() -> None:  # pragma: no cover (runs in the child before exec)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Child:
    """One child process: its command, log file, restarts."""

    def __init__(self, name: str, module: str, config: Path, logs: Path, budget: int = 0):
        self.name, self.module, self.config = name, module, config
        self.budget = budget
        """Episodes this child (an actor) is to deliver."""
        self.log_path = logs / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.finished = False

    def start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        env.setdefault("MUJOCO_GL", "egl")
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, "--config", str(self.config)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal(self, sig: int) -> None:
        if self.running:
            self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> bool:
        """Wait for the process to exit; True when it did."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self, timeout_s: float) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``."""
        if not self.running:
            return
        self.signal(signal.SIGTERM)
        if not self.wait(timeout_s):
            log.warning("%s did not stop within %.0f s; killing it", self.name, timeout_s)
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class TrainJob:
    """The children of one ``limbic-train`` run and their supervision."""

    def __init__(self, cfg: TrainConfig, stop: threading.Event):
        self.cfg, self.stop = cfg, stop
        self.out = Path(cfg.out_dir)
        if not cfg.resume:
            for name in RUN_ARTIFACTS:
                path = self.out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            for video in self.out.glob("eval_*.mp4"):
                video.unlink()
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        configs = self.out / "configs"
        chosen: set[str] = set()
        self.server_endpoint = free_endpoint(cfg.server.endpoint, chosen)
        self.weights_endpoint = free_endpoint(cfg.server.weights_endpoint, chosen)
        self.learner_endpoint = free_endpoint(cfg.endpoint, chosen)
        self.learner_cfg = self._learner_config(cfg.resume)
        self.learner = Child(
            "learner",
            "limbic.launch.learner",
            write_config(self.learner_cfg, configs / "learner.yaml"),
            self.logs,
        )
        self.server = Child(
            "server",
            "limbic.launch.serve",
            write_config(self._serve_config(), configs / "serve.yaml"),
            self.logs,
        )
        self.actors = [
            Child(
                a.actor_id,
                "limbic.launch.actor",
                write_config(a, configs / f"{a.actor_id}.yaml"),
                self.logs,
                budget=a.episodes,
            )
            for a in self._actor_configs()
        ]
        self._actors_done_at: float | None = None

    # ------------------------------------------------------------ configs

    def _learner_config(self, resume: bool) -> LearnerConfig:
        cfg = self.cfg
        values = {f.name: getattr(cfg, f.name) for f in fields(LearnerConfig)}
        values.update(
            endpoint=self.learner_endpoint,
            weights_endpoint=self.weights_endpoint,
            resume=resume,
            progress=False,
            threads=cfg.threads or 1,
            interventions=False,  # the actors' arbiters take over, not the learner
        )
        return LearnerConfig(**values)

    def _serve_config(self) -> ServeConfig:
        cfg = self.cfg
        server = ServerConfig(**{f.name: getattr(cfg.server, f.name) for f in fields(ServerConfig)})
        server.endpoint, server.weights_endpoint, server.name = (
            self.server_endpoint,
            self.weights_endpoint,
            "limbic-train",
        )
        encoder = EncoderConfig(target=SENTENCE_ENCODER, args={})
        policy = ModelConfig(
            target="limbic.policy.vla:VLAPolicy.load",
            args={
                "path": str((self.out / CHECKPOINT).resolve()),
                "explore": cfg.mode == "rl" and cfg.explore,  # sampled actions while learning
            },
            instruction_encoder=encoder,
        )
        critic = ModelConfig()
        if cfg.critic_checkpoint:
            critic = ModelConfig(
                target="limbic.critic.model:ProgressCritic.from_checkpoint",
                args={"path": str(Path(cfg.critic_checkpoint).resolve())},
                instruction_encoder=encoder,
            )
        return ServeConfig(
            backend="torch", device=cfg.device, server=server, policy=policy, critic=critic
        )

    def _actor_configs(self) -> list[ActorConfig]:
        cfg, a = self.cfg, self.cfg.actor
        budget = cfg.online_episodes if cfg.mode == "rl" else 0
        out = []
        for k in range(cfg.actors):
            share = budget // cfg.actors + (1 if k < budget % cfg.actors else 0)
            out.append(
                ActorConfig(
                    actor_id=f"actor-{k}",
                    robot=cfg.robot,
                    server=self.server_endpoint,
                    learner=self.learner_endpoint,
                    control_hz=a.control_hz,
                    action_deadline_s=a.action_deadline_s,
                    chunk_fetch=a.chunk_fetch,
                    episodes=share,
                    seed=ONLINE_SEED + 100_000 * k,
                    split="train",
                    min_policy_version=a.min_policy_version,
                    critic=a.critic,
                    image_format=a.image_format,
                    max_learner_backlog=a.max_learner_backlog,
                    max_unacked_episodes=a.max_unacked_episodes,
                    out_dir=str(self.out / "actors"),
                    outbox=a.outbox,
                    log_every_s=60.0,
                    arbiter="scripted" if cfg.interventions else "policy",
                    takeover=cfg.takeover,
                    watcher_jaw_gap_m=cfg.demo_expert.jaw_gap_m,
                )
            )
        return [c for c in out if c.episodes > 0]

    # ------------------------------------------------------------ supervision

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.out / STATUS).read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def _restart(self, child: Child, why: str) -> None:
        if child.restarts >= self.cfg.max_restarts:
            raise RuntimeError(
                f"{child.name} {why} {child.restarts + 1} times; last lines of {child.log_path}:\n{child.tail()}"
            )
        child.restarts += 1
        log.warning(
            "%s %s (exit %s); restarting it (%d/%d)",
            child.name,
            why,
            child.returncode,
            child.restarts,
            self.cfg.max_restarts,
        )
        if child is self.learner:  # a restarted learner resumes from its checkpoint
            self.learner_cfg = self._learner_config(resume=True)
            write_config(self.learner_cfg, child.config)
        child.start()

    def _supervise(self, status: dict[str, Any]) -> bool:
        """Start, check and restart children; True once the learner has finished."""
        learner = self.learner
        if not learner.running:
            if status.get("finished") and learner.returncode == 0:
                return True
            if learner.returncode == 0 and not status.get("finished"):
                raise RuntimeError(f"the learner stopped before finishing; see {learner.log_path}")
            self._restart(learner, "crashed")
        if not self.server.running:
            if self.server.proc is None:
                if (self.out / CHECKPOINT).exists():  # written (atomically) once set-up is done
                    self.server.start()
            else:
                self._restart(self.server, "crashed")
        for actor in self.actors:
            if actor.running or actor.finished:
                continue
            if actor.proc is None:
                actor.start()
            elif actor.returncode == 0:
                actor.finished = True
            else:
                self._restart(actor, "crashed")
        self._check_starved(status)
        return False

    def _check_starved(self, status: dict[str, Any]) -> None:
        """Every actor is done (all its episodes acknowledged) but the learner still waits for some:
        it refused them (see the actors' ``outbox/rejected``). Nothing more will come."""
        if not self.actors or not all(a.finished for a in self.actors):
            return
        if self._actors_done_at is None:
            self._actors_done_at = time.monotonic()
        budget = sum(a.budget for a in self.actors)
        if status.get("episodes", 0) < budget and time.monotonic() - self._actors_done_at > 30.0:
            raise RuntimeError(
                f"the actors finished but the learner holds {status.get('episodes', 0)} of {budget} "
                f"episodes; it refused some: see {self.out / 'actors'}/*/outbox/rejected"
            )

    def shutdown(self) -> None:
        """Actors, then the learner, then the server; each SIGTERM first, SIGKILL after the timeout."""
        timeout = self.cfg.stop_timeout_s
        for actor in self.actors:
            actor.signal(signal.SIGTERM)
        for actor in self.actors:
            actor.stop(timeout)
        self.learner.stop(timeout)
        self.server.stop(30.0)

    def run(self, progress: bool = True) -> TrainSummary:
        cfg = self.cfg
        started = time.monotonic()
        budget = cfg.online_episodes if cfg.mode == "rl" else 0
        bar = tqdm(
            total=budget,
            desc="limbic-train: starting",
            unit="ep",
            disable=not progress,
            dynamic_ncols=True,
        )
        finished = False
        try:
            self.learner.start()
            while not self.stop.is_set():
                status = self.status()
                if self._supervise(status):
                    finished = True
                    break
                self._show(bar, status)
                self.stop.wait(0.5)
        finally:
            bar.close()
            self.shutdown()
        status = self.status()
        reports = []
        for actor in self.actors:
            path = self.out / "actors" / actor.name / "report.json"
            if path.exists():
                reports.append(ActorReport(**json.loads(path.read_text())))
        restarts = {c.name: c.restarts for c in (self.learner, self.server, *self.actors)}
        return TrainSummary(
            self.out, finished, status, reports, (time.monotonic() - started) / 60, restarts
        )

    @staticmethod
    def _show(bar: tqdm, status: dict[str, Any]) -> None:
        if not status:
            return
        bar.set_description(f"limbic-train: {status.get('phase', '?')}")
        bar.n = min(int(status.get("episodes", 0)), bar.total or 0)
        success = status.get("success_rate")
        bar.set_postfix(
            success="-" if success is None else f"{success:.0%}",
            updates_per_s=f"{status.get('updates_per_s', 0.0):.1f}",
            weights=f"v{status.get('weights_version', 0)}",
            refresh=False,
        )
        bar.refresh()


def run_train(
    cfg: TrainConfig, stop: threading.Event | None = None, progress: bool = True
) -> TrainSummary:
    """Run the asynchronous job until the learner finishes or ``stop`` is set; return its summary."""
    job = TrainJob(cfg, stop or threading.Event())
    return job.run(progress=progress)


def print_summary(cfg: TrainConfig, summary: TrainSummary) -> None:
    """The closing lines of ``limbic-train``: success, speed, and where everything is."""
    s, out = summary.status, summary.out_dir
    curve = s.get("curve") or []
    head = "final" if summary.finished else "interrupted; last"
    if curve:
        print(
            f"{head} held-out success rate: {summary.success:.0%} ({cfg.eval_episodes} episodes, split "
            f"{cfg.eval_split}) after {curve[-1]['episodes']} online episodes, {s.get('updates', 0)} updates, "
            f"{summary.minutes:.1f} min"
        )
        if cells := format_cells(curve[-1].get("by_cell") or {}):
            print(cells)
        if located := format_localiser(curve[-1].get("localiser_mm") or []):
            print(located)
        if ends := format_outcomes(curve[-1].get("outcomes") or {}):
            print(ends)
    lag = s.get("weight_lag_s")
    rates = ", ".join(
        f"{a.actor_id} {a.achieved_hz:.2f} Hz (missed ticks {a.missed_ticks}, late actions {a.late_actions})"
        for a in summary.actors
    )
    print(
        f"weight lag (median): {'-' if lag is None else f'{lag:.3f} s'}; actors at {cfg.actor.control_hz:g} Hz: {rates or '-'}"
    )
    print(
        f"checkpoint: {out / CHECKPOINT}; curve: {out / 'curve.png'}; videos: {out}/eval_*.mp4; "
        f"datasets: {out / 'datasets'}; logs: {out / 'logs'}"
    )
    if not summary.finished:
        print(f"resume with: limbic-train resume=true out_dir={out}")
