"""What an actor records of a running episode: frames, steps, and the critic's view of each frame.

:class:`EpisodeBuffer` collects the ``T + 1`` frames and ``T`` applied steps and turns them
into the ``episode`` message for the learner. :class:`CriticTrack` asks the server's progress
critic about each new frame in a background thread, off the control path, and fuses the
incremental and forward estimates into the potential ``phi`` as the in-process
:class:`~limbic.critic.potential.OnlinePotential` does. :class:`TickClock` keeps the loop's
fixed rate, counts the tick slots it loses and says where the time before each went.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from limbic.contracts import Observation
from limbic.runtime.client import InferenceClient, InferenceError
from limbic.runtime.protocol import EpisodeUpload

log = logging.getLogger(__name__)


class TickClock:
    """Fixed-rate ticks on the monotonic clock; counts tick slots lost to overruns."""

    def __init__(self, period_s: float, stop: threading.Event):
        self.period_s, self._stop = period_s, stop
        self.next_s: float | None = None
        self._last_start: float | None = None
        self.missed = 0
        self.ticks = 0
        self.intervals = 0
        self.interval_s = 0.0
        self._marks: list[tuple[str, float]] = []
        self._cpu_start = 0.0

    def begin(self) -> float:
        """Wait for the next slot; returns the tick's start time (monotonic seconds)."""
        now = called = time.monotonic()
        if self.next_s is None:
            self.next_s = now
        elif now < self.next_s:
            self._stop.wait(self.next_s - now)
            now = time.monotonic()
        late = now - self.next_s
        if late > 0.5 * self.period_s:
            lost = int(late / self.period_s + 0.5)
            self.missed += lost
            log.info(
                "missed %d tick(s): this tick began %.1f ms after its slot; %s",
                lost,
                late * 1e3,
                self._account(called, self.next_s, late),
            )
            self.next_s = now
        self.next_s += self.period_s
        if self._last_start is not None:
            self.intervals += 1
            self.interval_s += now - self._last_start
        self._last_start = now
        self._marks = []
        self._cpu_start = time.thread_time()
        self.ticks += 1
        return now

    def mark(self, phase: str) -> None:
        """The running tick finished ``phase``; a missed tick's log line shows where time went."""
        self._marks.append((phase, time.monotonic()))

    def _account(self, called: float, slot: float, late: float) -> str:
        """Where the time before a late tick went: the previous tick's work, or the wait."""
        if self._last_start is None:
            return "no previous tick"
        work = called - self._last_start
        phases, t = [], self._last_start
        for phase, at in self._marks:
            phases.append(f"{phase} {(at - t) * 1e3:.0f}")
            t = at
        if called - t > 0.0005:
            phases.append(f"rest {(called - t) * 1e3:.0f}")
        cpu = time.thread_time() - self._cpu_start
        spent = (
            f"the previous tick's work took {work * 1e3:.0f} ms ({', '.join(phases) or 'no phases'}"
            f" ms), {cpu * 1e3:.0f} ms of it on a CPU in this thread"
        )
        if called <= slot:
            return f"{spent} and ended before the slot: the wait woke {late * 1e3:.0f} ms late"
        return spent

    def pause(self) -> None:
        """Stop the schedule (between episodes): the next tick starts a fresh one."""
        self.next_s = self._last_start = None
        self._marks = []

    @property
    def achieved_hz(self) -> float:
        """Tick starts per second while ticking (pauses between episodes left out)."""
        return self.intervals / self.interval_s if self.interval_s > 0 else 0.0


class CriticTrack:
    """Per-frame potential and done probability from the server's critic, in a background thread.

    Frame ``t`` is judged against frame ``t - 1`` (the incremental estimate, chained) and
    frame 0 (the forward estimate); ``phi`` is their mean, as the in-process
    :class:`~limbic.critic.potential.OnlinePotential` fuses them.
    """

    def __init__(self, client: InferenceClient, views: tuple[str, ...], timeout_s: float):
        self.client, self.views, self.timeout_s = client, views, timeout_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="limbic-critic")
        self.misses = 0
        self._futures: list[Future] = []

    def start(self, obs: Observation) -> None:
        """A new episode begins at ``obs`` (its potential is 0)."""
        self._instruction = obs.instruction
        self._first = self._prev = self._frame(obs)
        self._phi_inc = 0.0
        self._phi = [0.0]
        self._done = [0.0]
        self._futures = []

    def _frame(self, obs: Observation) -> dict[str, np.ndarray]:
        return {v: obs.images[v] for v in self.views}

    def add(self, obs: Observation) -> None:
        """Queue the next frame of the episode."""
        frame, prev = self._frame(obs), self._prev
        self._prev = frame
        self._futures.append(self._pool.submit(self._judge, prev, frame))

    def _judge(self, prev: dict, frame: dict) -> None:
        try:
            inc = self.client.critic(
                [prev, frame], self._instruction, phi0=self._phi_inc, timeout_s=self.timeout_s
            )
            self._phi_inc = float(inc.value[0])
            if prev is self._first:
                fwd_value = self._phi_inc
            else:
                fwd = self.client.critic(
                    [self._first, frame], self._instruction, timeout_s=self.timeout_s
                )
                fwd_value = float(fwd.value[0])
            self._phi.append(0.5 * (self._phi_inc + fwd_value))
            self._done.append(float(inc.done_prob[0]))
        except InferenceError as e:
            self.misses += 1
            log.warning("critic failed on a frame (%s); carrying the potential over", e)
            self._phi.append(self._phi[-1])
            self._done.append(0.0)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Wait for every queued frame; ``(phi float32[T + 1], done_prob float32[T + 1])``."""
        for f in self._futures:
            f.result()
        return np.asarray(self._phi, np.float32), np.asarray(self._done, np.float32)

    def close(self) -> None:
        """Stop the worker thread."""
        self._pool.shutdown(wait=True, cancel_futures=True)


class EpisodeBuffer:
    """The frames and steps of the running episode, turned into an ``episode`` message at the end."""

    def __init__(self, views: tuple[str, ...]):
        self.views = views
        self.frames: dict[str, list[np.ndarray]] = {v: [] for v in views}
        self.state, self.capture_ns = [], []
        self.steps: dict[str, list] = {
            k: [] for k in ("action", "reward", "success", "terminated", "intervention")
        }
        self.steps.update(policy_version=[], tick_ns=[], action_ns=[])
        self.late_ticks = 0

    def frame(self, obs: Observation) -> None:
        """Append an observation (the first one, then one after every applied action)."""
        for v in self.views:
            self.frames[v].append(obs.images[v])
        self.state.append(obs.state)
        self.capture_ns.append(obs.timestamp_ns)

    def step(self, **values: Any) -> None:
        """Append one applied action and what followed."""
        for k, v in values.items():
            self.steps[k].append(v)

    def __len__(self) -> int:
        return len(self.steps["action"])

    def upload(
        self,
        episode_id: str,
        actor: str,
        seq: int,
        instruction: str,
        seed: int,
        split: str,
        phi: np.ndarray,
        done_prob: np.ndarray,
    ) -> EpisodeUpload:
        """The ``episode`` message (filed as ``intervention`` when a human acted in it)."""
        s = self.steps
        intervention = np.asarray(s["intervention"], bool)
        return EpisodeUpload(
            id=seq,
            episode_id=episode_id,
            actor=actor,
            seq=seq,
            source="intervention" if intervention.any() else "online",
            instruction=instruction,
            seed=seed,
            split=split,
            images={v: np.stack(f) for v, f in self.frames.items()},
            state=np.stack(self.state).astype(np.float32),
            capture_ns=np.asarray(self.capture_ns, np.int64),
            phi=phi,
            done_prob=done_prob,
            action=np.stack(s["action"]).astype(np.float32),
            reward=np.asarray(s["reward"], np.float32),
            success=np.asarray(s["success"], bool),
            terminated=np.asarray(s["terminated"], bool),
            intervention=intervention,
            policy_version=np.asarray(s["policy_version"], np.int64),
            tick_ns=np.asarray(s["tick_ns"], np.int64),
            action_ns=np.asarray(s["action_ns"], np.int64),
            late_ticks=self.late_ticks,
        )
