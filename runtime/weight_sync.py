"""The learner's side of weight publication, and how long new weights take to reach the arms.

:class:`WeightSync` is a thread that publishes the newest weight snapshot the training loop
offers to the inference server's weights endpoint (:class:`~limbic.runtime.weights.WeightPublisher`,
the server's hot-swap path), never blocking training. It also watches the server with
heartbeats: a server that comes back from a crash holds its initial weights, so the last
snapshot is published again (under a new version). Versions only grow; a ``stale_version``
answer (a learner resumed from a checkpoint older than what the server holds) moves the
next version above the server's.

:class:`WeightLag` turns publications and the per-step ``policy_version`` and times of the
episodes actors send into the **weight lag**: for each publication, the delay to the first
action computed with it (or a newer version), counted where an actor was acting through the
publication (an idle actor would only measure its idleness). :class:`ActingLag` counts the
same thing in updates: how many gradient updates the learner had made, when an episode reached
it, beyond those in the weights that began the episode (the in-process loop's is 0).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from limbic.runtime.client import InferenceError, ServerError, ServerTimeoutError
from limbic.runtime.protocol import ErrorCode
from limbic.runtime.weights import WeightPublisher

log = logging.getLogger(__name__)


class WeightSync:
    """Publishes offered snapshots (newest wins) from a background thread."""

    def __init__(
        self,
        endpoint: str,
        log_path: Path | None = None,
        *,
        first_version: int = 1,
        timeout_s: float = 30.0,
        check_interval_s: float = 0.5,
        server_public_key: bytes | None = None,
        client_secret_key: str | None = None,
    ):
        self.endpoint, self.log_path = endpoint, log_path
        self.timeout_s, self.check_interval_s = timeout_s, check_interval_s
        self._publisher = WeightPublisher(
            endpoint,
            timeout_s=timeout_s,
            server_public_key=server_public_key,
            client_secret_key=client_secret_key,
        )
        self._cond = threading.Condition()
        self._pending: dict[str, np.ndarray] | None = None
        self._pending_updates: int | None = None
        self._last: dict[str, np.ndarray] | None = None
        self._last_updates: int | None = None
        self.next_version = max(1, first_version)
        self.live_version = -1
        """The version the server last said is live (-1: unknown)."""
        self.published: list[dict[str, Any]] = []
        """``{version, publish_ns, live_ns, bytes}`` of every publication the server acknowledged,
        and ``updates`` where the snapshot was offered with its update count."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> WeightSync:
        self._thread = threading.Thread(target=self._guard, name="limbic-weights", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self._publisher.close()

    def offer(self, tensors: Mapping[str, np.ndarray], updates: int | None = None) -> None:
        """Hand over a snapshot (numpy arrays the caller no longer changes) and, optionally, the
        gradient updates it holds (recorded with its publication); the newest wins."""
        with self._cond:
            self._pending = dict(tensors)
            self._pending_updates = updates
            self._cond.notify_all()

    def wait_published(self, timeout_s: float) -> bool:
        """Block until the offered snapshot is live on the server (or ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending is not None:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    @property
    def version(self) -> int:
        """The last version the server acknowledged (0: none yet)."""
        return self.published[-1]["version"] if self.published else 0

    def _guard(self) -> None:
        try:
            self._run()
        except BaseException as e:
            log.exception("weight publication thread died")
            self.error = e

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                if self._pending is None:
                    self._cond.wait(self.check_interval_s)
                snapshot, updates = self._pending, self._pending_updates
            if self._stop.is_set():
                return
            if snapshot is None:
                self._watch()
                continue
            if self._publish(snapshot, updates):
                with self._cond:
                    if self._pending is snapshot:
                        self._pending = None
                    self._last, self._last_updates = snapshot, updates
                    self._cond.notify_all()
            else:
                self._stop.wait(self.check_interval_s)

    def _watch(self) -> None:
        """Heartbeat the server; publish the last snapshot again if it lost it (restarted)."""
        try:
            beat = self._publisher.ping(self.check_interval_s)
        except InferenceError:
            return
        self.live_version = beat.policy_version
        if (
            self._last is not None
            and self.published
            and beat.policy_version < self.published[-1]["version"]
        ):
            log.warning(
                "server holds policy v%d, below the published v%d (restarted?): publishing again",
                beat.policy_version,
                self.published[-1]["version"],
            )
            with self._cond:
                if self._pending is None:
                    self._pending, self._pending_updates = self._last, self._last_updates

    def _publish(self, tensors: dict[str, np.ndarray], updates: int | None = None) -> bool:
        version = self.next_version
        t0 = time.time_ns()
        try:
            ack = self._publisher.publish("policy", version, tensors, timeout_s=self.timeout_s)
        except ServerError as e:
            if e.code == ErrorCode.STALE_VERSION:
                self._catch_up()
                return False
            if e.code == ErrorCode.INTERNAL:  # the server failed loading them; it keeps serving
                log.error("server failed to load weights v%d: %s; retrying", version, e)
                return False
            raise  # weights that do not fit the served model: a configuration error
        except ServerTimeoutError as e:
            log.info("weights v%d not published (%s); retrying", version, e)
            return False
        record = {
            "version": ack.version,
            "publish_ns": t0,
            "live_ns": time.time_ns(),
            "bytes": int(sum(a.nbytes for a in tensors.values())),
        }
        if updates is not None:
            record["updates"] = int(updates)
        self.published.append(record)
        self.live_version = ack.version
        self.next_version = ack.version + 1
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        return True

    def _catch_up(self) -> None:
        try:
            beat = self._publisher.ping()
        except InferenceError:
            return
        self.next_version = max(self.next_version, beat.policy_version + 1)
        log.info(
            "server holds policy v%d; next publication is v%d",
            beat.policy_version,
            self.next_version,
        )


class WeightLag:
    """Weight lag from publications and the actors' per-step versions and times."""

    def __init__(self):
        self._first: dict[int, int] = {}
        self.samples: dict[int, float] = {}
        """Version -> seconds from its publication to the first action computed with it."""

    def add_episode(
        self,
        published: list[dict[str, Any]],
        policy_version: np.ndarray,
        tick_ns: np.ndarray,
        action_ns: np.ndarray,
    ) -> None:
        """Record the version changes in one episode's steps against the publications so far."""
        if len(policy_version) < 2:
            return
        gaps = np.diff(tick_ns)
        typical = float(np.median(gaps)) if len(gaps) else 0.0
        for pub in published:
            v, t_pub = pub["version"], pub["publish_ns"]
            newer = np.flatnonzero(policy_version >= v)
            if not len(newer) or newer[0] == 0:
                continue
            i = int(newer[0])
            gap = tick_ns[i] - tick_ns[i - 1]
            acting = (
                gap <= 2.5 * typical and tick_ns[i - 1] >= t_pub - gap and policy_version[i - 1] < v
            )
            lag = (action_ns[i] - t_pub) / 1e9
            if acting and lag >= 0:
                self.samples[v] = min(lag, self.samples.get(v, np.inf))

    @property
    def median_s(self) -> float:
        """Median over publications (NaN before any sample)."""
        return float(np.median(list(self.samples.values()))) if self.samples else float("nan")


class ActingLag:
    """Updates behind: per online episode, the learner's update count when the episode reached it
    minus the update count of the weights its first action was computed with (from the
    publications' ``updates``; episodes acted on weights this learner did not publish, as
    before a restart, are left out)."""

    def __init__(self):
        self.samples: list[int] = []

    def add_episode(
        self, published: list[dict[str, Any]], policy_version: np.ndarray, updates_now: int
    ) -> None:
        """Record one episode's lag against the publications so far."""
        versions = np.asarray(policy_version)
        acted = versions[versions > 0]  # 0: a tick held before any weights
        if not len(acted):
            return
        first = int(acted[0])
        for pub in reversed(published):
            if pub["version"] == first:
                if "updates" in pub:
                    self.samples.append(max(0, int(updates_now) - int(pub["updates"])))
                return

    @property
    def median(self) -> float:
        """Median over episodes (NaN before any sample)."""
        return float(np.median(self.samples)) if self.samples else float("nan")
