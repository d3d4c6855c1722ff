"""Batching: which queued requests run together, and how a batch becomes model inputs and replies.

:class:`Batcher` holds decoded requests per kind and decides when a batch runs: at once when
it is full or nobody else is due, else after waiting up to ``max_wait_us`` for the clients
whose next request its record of their rhythm says is due. :class:`ActBatch` and
:class:`CriticBatch` assemble the inputs (on the serving thread), call the model
(:meth:`Batch.call_model`, the only part that may run on the model thread) and build one
reply per request, each with its timings.
"""

from __future__ import annotations

import abc
import logging
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from limbic.runtime import _value
from limbic.runtime.backends import ModelRunner
from limbic.runtime.protocol import (
    ActReply,
    ActRequest,
    CriticReply,
    CriticRequest,
    ErrorCode,
    ErrorReply,
    ProtocolError,
    Timings,
)

log = logging.getLogger(__name__)

CADENCE_MEMORY_S = 10.0
"""A client's request rhythm is forgotten after this long without a request."""


@dataclass
class Pending:
    """A decoded request waiting for its batch, with where to send the reply."""

    envelope: list[bytes]
    client: bytes
    request: ActRequest | CriticRequest
    decoded_at: float
    decode_us: float


@dataclass
class Cadence:
    """When a client's next request of one kind is due, from its recent rhythm."""

    last: float
    interval: float | None = None

    def due_within(self, now: float, horizon: float) -> bool:
        """True if its next request is expected before ``horizon`` and is not long overdue."""
        if self.interval is None:
            return False
        due = self.last + self.interval
        return now - self.interval <= due <= horizon


class Batcher:
    """Decoded requests waiting for a model call, one FIFO per kind (serving thread only)."""

    def __init__(self, max_batch: int, max_wait_s: float):
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._queues: dict[str, deque[Pending]] = {"act": deque(), "critic": deque()}
        self._cadence: dict[str, dict[bytes, Cadence]] = {"act": {}, "critic": {}}

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def put(self, kind: str, item: Pending) -> None:
        """Queue a request and update its client's rhythm."""
        self._queues[kind].append(item)
        cadence = self._cadence[kind].get(item.client)
        if cadence is None:
            self._cadence[kind][item.client] = Cadence(item.decoded_at)
            return
        gap = item.decoded_at - cadence.last
        cadence.interval = gap if cadence.interval is None else 0.7 * cadence.interval + 0.3 * gap
        cadence.last = item.decoded_at

    def plan(self, now: float) -> tuple[str, float]:
        """``(kind, wait_s)``: the kind to run next (oldest first) and how long to wait for more.

        ``("", 0)`` when nothing is queued. A partial batch waits only while another client's
        next request is due before the batch's deadline: a lone client never waits.
        """
        heads = [(q[0].decoded_at, k) for k, q in self._queues.items() if q]
        if not heads:
            return "", 0.0
        first, kind = min(heads)
        queue = self._queues[kind]
        deadline = first + self.max_wait_s
        if len(queue) >= self.max_batch or now >= deadline:
            return kind, 0.0
        return kind, (deadline - now) if self.others_due(kind, now, deadline) else 0.0

    def others_due(
        self, kind: str, now: float, horizon: float, exclude: set[bytes] = frozenset()
    ) -> bool:
        """Whether a client with no queued request of ``kind`` (and not in ``exclude``) is due by ``horizon``."""
        waiting = {p.client for p in self._queues[kind]} | exclude
        return any(
            c.due_within(now, horizon)
            for client, c in self._cadence[kind].items()
            if client not in waiting
        )

    def pop(self, kind: str) -> list[Pending]:
        """Up to ``max_batch`` of the oldest requests of ``kind``."""
        queue = self._queues[kind]
        return [queue.popleft() for _ in range(min(len(queue), self.max_batch))]

    def forget(self, now: float) -> None:
        """Drop the rhythm of clients silent for :data:`CADENCE_MEMORY_S`."""
        for cadences in self._cadence.values():
            for client in [c for c, v in cadences.items() if now - v.last > CADENCE_MEMORY_S]:
                del cadences[client]


class Batch(abc.ABC):
    """One model call for a list of requests; the replies are built after it has run."""

    kind = ""

    def __init__(self, requests: list[Pending], runner: ModelRunner, max_rows: int):
        self.started = time.perf_counter()
        self.runner, self.max_rows = runner, max_rows
        self.requests: list[Pending] = []
        self.early: list[tuple[Pending, Any]] = []  # replies that need no model call
        for p in requests:
            budget, waited_ms = p.request.timeout_ms, (self.started - p.decoded_at) * 1e3
            if budget is not None and waited_ms > budget:
                problem = f"queued {waited_ms:.1f} ms, past the {budget} ms budget"
                error = ProtocolError(ErrorCode.DEADLINE_EXCEEDED, "timeout_ms", problem)
                self.early.append((p, ErrorReply.of(p.request.id, error)))
            else:
                self.requests.append(p)
        self._outputs: tuple[np.ndarray, ...] | None = None
        self._error: tuple[BaseException, str] | None = None
        if self.requests:
            self._guard(self._assemble)
        self.t_assembled = self.t_infer = self.t_done = time.perf_counter()

    def _guard(self, step: Any) -> None:
        try:
            step()
        except Exception as e:  # a model failure fails this batch, never the server
            log.exception("%s batch of %d request(s) failed", self.kind, len(self.requests))
            self._error = (e, traceback.format_exc(limit=8))

    @property
    def empty(self) -> bool:
        """True when every request was answered without the model (all past their budget)."""
        return not self.requests

    def call_model(self) -> None:
        """Run the model on the assembled inputs (safe to call from the model thread)."""
        if self._error is None and self.requests:
            self.t_infer = time.perf_counter()
            self._guard(self._call)
            self.t_done = time.perf_counter()

    def replies(self) -> list[tuple[Pending, Any]]:
        """One reply per request: the model's answer or an error naming why not."""
        out = list(self.early)
        if self._error is None and self.requests:
            self._guard(lambda: out.extend(self._replies()))  # all or nothing
        if self._error is not None:
            e, text = self._error
            message = f"{type(e).__name__}: {e}"
            out += [
                (p, ErrorReply(p.request.id, ErrorCode.INTERNAL, message, None, text))
                for p in self.requests
            ]
        return out

    def timings(self, p: Pending) -> Timings:
        """The timings of one request in this batch."""
        return Timings(
            queue_us=(self.started - p.decoded_at) * 1e6,
            decode_us=p.decode_us,
            assemble_us=(self.t_assembled - self.started) * 1e6,
            infer_us=(self.t_done - self.t_infer) * 1e6,
            batch_size=len(self.requests),
        )

    @abc.abstractmethod
    def _assemble(self) -> None:
        """Stack the requests into model inputs (serving thread)."""

    @abc.abstractmethod
    def _call(self) -> None:
        """Call the model on the inputs, setting ``_outputs`` (any thread)."""

    @abc.abstractmethod
    def _replies(self) -> list[tuple[Pending, Any]]:
        """Turn ``_outputs`` into one reply per request (serving thread)."""


class ActBatch(Batch):
    """Observations -> ``uint8[B, V, H, W, 3]``, ``float32[B, S]``, ``float32[B, D]`` -> action chunks."""

    kind = "act"

    def _assemble(self) -> None:
        spec = self.runner.spec
        h, w = spec.image_hw
        n = len(self.requests)
        self.images = np.empty((n, len(spec.views), h, w, 3), dtype=np.uint8)
        self.state = np.empty((n, spec.state_dim), dtype=np.float32)
        for i, p in enumerate(self.requests):
            obs = p.request.obs
            for j, view in enumerate(spec.views):
                self.images[i, j] = obs.images[view]
            self.state[i] = obs.state
        self.lang = self.runner.encoder.encode([p.request.obs.instruction for p in self.requests])

    def _call(self) -> None:
        self._outputs = self.runner.run(self.images, self.state, self.lang)

    def _replies(self) -> list[tuple[Pending, Any]]:
        spec, version = self.runner.spec, self.runner.version
        (actions,) = self._outputs
        expected = (len(self.requests), spec.chunk_len, spec.action_dim)
        if tuple(actions.shape) != expected:
            raise RuntimeError(
                f"policy returned actions of shape {tuple(actions.shape)}, expected {expected}"
            )
        out = []
        for i, p in enumerate(self.requests):
            chunk = np.ascontiguousarray(actions[i], dtype=np.float32)
            if not np.isfinite(chunk).all():
                problem = f"policy v{version} produced non-finite actions"
                error = ProtocolError(ErrorCode.INVALID_OUTPUT, "actions", problem)
                out.append((p, ErrorReply.of(p.request.id, error)))
            else:
                out.append((p, ActReply(p.request.id, chunk, version, self.timings(p))))
        return out


class CriticBatch(Batch):
    """Episode windows -> frame pairs (incremental, forward, backward) -> progress, done, value.

    A window of ``n`` frames needs ``n - 1`` incremental pairs, ``n - 2`` forward pairs (the
    first forward pair is the first incremental one) and, with a goal, ``n - 1`` backward
    pairs; pairs run in model calls of at most ``max_rows``.
    """

    kind = "critic"

    def _assemble(self) -> None:
        spec = self.runner.spec
        rows_a, rows_b, row_request = [], [], []
        self.layout = []
        for k, p in enumerate(self.requests):
            req = p.request
            frames = [np.stack([f[v] for v in spec.views]) for f in req.frames]
            n = len(frames)
            pairs = [(frames[i], frames[i + 1]) for i in range(n - 1)]
            pairs += [(frames[0], frames[t]) for t in range(2, n)]
            if req.goal is not None:
                goal = np.stack([req.goal[v] for v in spec.views])
                pairs += [(goal, frames[t]) for t in range(1, n)]
            self.layout.append((len(rows_a), len(pairs), n))
            for a, b in pairs:
                rows_a.append(a)
                rows_b.append(b)
                row_request.append(k)
        self.images_a, self.images_b = np.stack(rows_a), np.stack(rows_b)
        lang = self.runner.encoder.encode([p.request.instruction for p in self.requests])
        self.lang = lang[np.asarray(row_request)]

    def _call(self) -> None:
        progress, done = [], []
        for s in range(0, len(self.images_a), self.max_rows):
            rows = slice(s, s + self.max_rows)
            c, d = self.runner.run(self.images_a[rows], self.images_b[rows], self.lang[rows])
            progress.append(c)
            done.append(d)
        self._outputs = (np.concatenate(progress).reshape(-1), np.concatenate(done).reshape(-1))

    def _replies(self) -> list[tuple[Pending, Any]]:
        progress, done = self._outputs
        rows, version = len(self.images_a), self.runner.version
        if progress.shape != (rows,) or done.shape != (rows,):
            raise RuntimeError(
                f"critic returned {progress.shape}/{done.shape}, expected ({rows},) each"
            )
        out = []
        for (start, count, n), p in zip(self.layout, self.requests, strict=True):
            c_all, d_all = progress[start : start + count], done[start : start + count]
            if not (np.isfinite(c_all).all() and np.isfinite(d_all).all()):
                problem = f"critic v{version} produced non-finite outputs"
                error = ProtocolError(ErrorCode.INVALID_OUTPUT, "progress", problem)
                out.append((p, ErrorReply.of(p.request.id, error)))
                continue
            c_all = np.clip(c_all, -1.0, 1.0)
            c_inc = c_all[: n - 1]
            c_fwd = np.concatenate([c_inc[:1], c_all[n - 1 : 2 * n - 3]])
            c_bwd = c_all[2 * n - 3 :] if p.request.goal is not None else None
            value = _value.fused_value(c_inc, c_fwd, c_bwd, p.request.phi0)
            done_prob = np.clip(d_all[: n - 1], 0.0, 1.0).astype(np.float32)
            reply = CriticReply(
                p.request.id, c_inc.astype(np.float32), done_prob, value, version, self.timings(p)
            )
            out.append((p, reply))
        return out
