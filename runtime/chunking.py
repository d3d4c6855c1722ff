"""Real-time action chunking: one action per control tick, the next chunk fetched inline or early.

The policy answers with a chunk of actions starting at the tick of the observation it saw.
:class:`ActionChunkBroker` hands them out one per tick, and gets the next chunk one of two ways:

* **inline**: when the chunk runs out, ask with this tick's observation and wait for the
  answer within the tick. Every chunk is then run as the policy planned it, from its first
  action, exactly as the in-process loop and evaluation run it. This needs the round trip to
  fit inside the tick's deadline.
* **prefetch**: while enough of the current chunk is left to cover the server's round trip,
  ask for the next chunk in the background with the latest observation. When the new chunk
  arrives ``k`` ticks after its observation, its first ``k`` actions are already in the past
  and are skipped, so the arm switches to the new plan at the action meant for *now* and never
  waits for the network. Only a chunk that runs out before its successor arrives makes the arm
  wait (counted in ``starved_ticks``). The price: at least one action of every chunk, its
  first (the one planned from the freshest view), is never run, and the arm acts on a view at
  least a tick old.

``fetch="auto"`` (the default) fetches inline while the worst recent round trip fits in
``inline_share`` of the deadline (all of it by default), and prefetches past that: a server
further away than a tick. With ``chunk_len = 1`` there is nothing to prefetch; the broker then
asks every tick.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from limbic.contracts import Observation


class ChunkStarvationError(TimeoutError):
    """The current chunk ran out and the next one did not arrive within the deadline."""


FETCH_MODES = ("auto", "inline", "prefetch")
"""How the broker gets the next chunk (module docstring)."""
ROUND_TRIP_HISTORY = 2000
"""Round trips kept for :meth:`ActionChunkBroker.round_trip_ms`."""


class ActionChunkBroker:
    """Turns ``infer(obs) -> float32[chunk, A]`` into ``act(obs) -> float32[A]`` once per tick.

    ``control_dt_s`` is the control period; ``margin_ticks`` extra ticks of slack on top of
    the worst recent round trip; ``timeout_s`` bounds any wait for a chunk (the tick's
    deadline). ``fetch`` is ``auto``, ``inline`` or ``prefetch`` (module docstring);
    ``inline_share`` is the share of ``timeout_s`` the worst recent round trip may take for
    ``auto`` to fetch inline. ``infer`` may also return ``(chunk, meta)``; :attr:`chunk_meta` is
    then the meta of the chunk the last action came from (an actor loop keeps the policy
    version there).
    """

    def __init__(
        self,
        infer: Callable[[Observation], np.ndarray],
        control_dt_s: float,
        *,
        margin_ticks: int = 1,
        timeout_s: float = 1.0,
        latency_window: int = 20,
        fetch: str = "auto",
        inline_share: float = 1.0,
    ):
        if control_dt_s <= 0:
            raise ValueError(f"control_dt_s must be > 0, got {control_dt_s}")
        if fetch not in FETCH_MODES:
            raise ValueError(f"fetch: expected one of {list(FETCH_MODES)}, got {fetch!r}")
        if not 0.0 < inline_share <= 1.0:
            raise ValueError(f"inline_share must be in (0, 1], got {inline_share}")
        self.fetch = fetch
        self.inline_share = inline_share
        # counts over the broker's life (resets keep them): chunks run, their actions skipped
        # as already past, ticks that waited for a late prefetch, planned inline fetches
        self.chunks_used = 0
        self.skipped_actions = 0
        self.starved_ticks = 0
        self.inline_fetches = 0
        self.infer = infer
        self.control_dt_s = control_dt_s
        self.margin_ticks = margin_ticks
        self.timeout_s = timeout_s
        self._latencies: deque[float] = deque(maxlen=latency_window)
        self._history: deque[float] = deque(maxlen=ROUND_TRIP_HISTORY)
        # the worker thread appends round trips while the control loop reads them
        self._latency_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="limbic-chunk")
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget the current chunk (at an episode's start); a pending request is discarded."""
        self.tick = 0
        self._chunk: np.ndarray | None = None
        self._chunk_tick = 0
        self.chunk_meta: Any = None
        self._pending: tuple[int, Future] | None = None
        self.last_error: BaseException | None = None

    @property
    def lead_ticks(self) -> int:
        """Ticks before a chunk runs out at which the next one is requested."""
        return math.ceil(self._worst_latency() / self.control_dt_s) + self.margin_ticks

    @property
    def prefetching(self) -> bool:
        """Whether the next chunk is asked for early (else inline, when this one runs out)."""
        if self.fetch != "auto":
            return self.fetch == "prefetch"
        return self._worst_latency() > self.inline_share * self.timeout_s

    def _worst_latency(self) -> float:
        with self._latency_lock:
            return max(self._latencies, default=0.0)

    def round_trip_ms(self) -> list[float]:
        """Median and 99th percentile of the last :data:`ROUND_TRIP_HISTORY` round trips, in
        milliseconds (empty before the first)."""
        with self._latency_lock:
            trips = list(self._history)
        return [float(x) for x in np.percentile(trips, [50, 99]) * 1e3] if trips else []

    @property
    def in_flight(self) -> bool:
        """True while a requested chunk has not arrived yet."""
        return self._pending is not None and not self._pending[1].done()

    @property
    def chunk_origin(self) -> int:
        """Tick of the observation the current chunk was planned from (its actions' age)."""
        return self._chunk_tick

    def _timed_infer(self, obs: Observation) -> tuple[np.ndarray, Any]:
        t0 = time.monotonic()
        out = self.infer(obs)
        chunk, meta = out if isinstance(out, tuple) else (out, None)
        chunk = np.asarray(chunk, dtype=np.float32)
        with self._latency_lock:
            self._latencies.append(time.monotonic() - t0)
            self._history.append(self._latencies[-1])
        if chunk.ndim != 2 or chunk.shape[0] < 1:
            raise ValueError(
                f"infer returned shape {chunk.shape}, expected [chunk_len, action_dim]"
            )
        return chunk, meta

    def _adopt(self, result: tuple[np.ndarray, Any], requested_tick: int) -> None:
        chunk, self.chunk_meta = result
        self._chunk, self._chunk_tick = chunk, requested_tick
        self.chunks_used += 1
        self.skipped_actions += max(0, self.tick - requested_tick)

    def _covers_now(self) -> bool:
        return self._chunk is not None and 0 <= self.tick - self._chunk_tick < len(self._chunk)

    def _collect(self) -> None:
        """Adopt the prefetched chunk if it has arrived; a failed prefetch is retried next tick."""
        if self._pending is None or not self._pending[1].done():
            return
        (requested, future), self._pending = self._pending, None
        try:
            result = future.result()
        except Exception as e:
            self.last_error = (
                e  # the current chunk still covers the arm; raised only if it must wait
            )
            return
        if self.tick - requested < len(result[0]):
            self._adopt(result, requested)

    def act(self, obs: Observation) -> np.ndarray:
        """The action for this tick; call once per control period with the newest observation."""
        with self._lock:
            self._collect()
            if not self._covers_now():
                if self._chunk is not None:
                    if self._pending is None and not self.prefetching:
                        self.inline_fetches += 1  # planned: the chunk ran out, ask now
                    else:
                        self.starved_ticks += 1
                self._wait_for_chunk(obs)
            index = self.tick - self._chunk_tick
            action = self._chunk[index]
            left = len(self._chunk) - index - 1
            if (
                self._pending is None
                and len(self._chunk) > 1
                and left <= self.lead_ticks
                and self.prefetching
            ):
                self._pending = (self.tick, self._pool.submit(self._timed_infer, obs))
            self.tick += 1
            return action

    def _wait_for_chunk(self, obs: Observation) -> None:
        """Block (the arm waits) until a chunk covers this tick; raise the client's error or
        :class:`ChunkStarvationError` after ``timeout_s``."""
        deadline = time.monotonic() + self.timeout_s
        while not self._covers_now():
            if self._pending is None:
                self._pending = (self.tick, self._pool.submit(self._timed_infer, obs))
            requested, future = self._pending
            remaining = deadline - time.monotonic()
            try:
                result = future.result(timeout=max(0.0, remaining))
            except FutureTimeout:
                raise ChunkStarvationError(
                    f"no action chunk within {self.timeout_s} s at tick {self.tick}"
                ) from None
            finally:
                if future.done():
                    self._pending = None
            if self.tick - requested < len(result[0]):
                self._adopt(result, requested)

    def close(self) -> None:
        """Stop the background worker."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ActionChunkBroker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
