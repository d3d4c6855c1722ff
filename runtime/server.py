"""The inference server: one ROUTER socket, many actor loops, batched policy and critic calls.

Three threads, each owning its sockets:

* the **I/O thread** receives on the ROUTER, decodes and validates each request (answering
  hello, heartbeat and bad requests at once, so health checks never wait on the model), and
  forwards the replies that the batch thread hands back over an inproc socket;
* the **batch thread** takes the requests queued so far (one kind at a time, up to
  ``max_batch``), waits up to ``max_wait_us`` for more only while other recently active
  clients may still send, runs the model, and swaps staged weights between batches;
* the **weight thread** (:mod:`limbic.runtime.weights`) receives new weights from a learner
  and stages them.

Nothing a client sends can stop the server: every failure is an error reply naming the field.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np
import zmq

from limbic.contracts import ContractError, check_image
from limbic.runtime import _value, auth
from limbic.runtime.backends import ModelConfig, ModelRunner, build_runner
from limbic.runtime.protocol import (
    ActReply,
    ActRequest,
    CriticReply,
    CriticRequest,
    ErrorCode,
    ErrorReply,
    Heartbeat,
    Hello,
    Limits,
    ProtocolError,
    ServerInfo,
    Timings,
    decode,
    encode,
)
from limbic.runtime.weights import WeightReceiver

log = logging.getLogger(__name__)

_RECENT_S = 1.0
"""A client that sent a request of a kind within this window may send another soon: batching waits for it."""


@dataclass
class CurveConfig:
    """ZeroMQ CURVE encryption and authentication, for endpoints beyond loopback."""

    enabled: bool = False
    """Encrypt and authenticate every connection."""
    server_secret_key: str = ""
    """The server's ``.key_secret`` file written by ``limbic-serve keygen``."""
    authorized_clients_dir: str = ""
    """Folder of client public ``.key`` files allowed in; empty admits any client holding the server's public key."""


@dataclass
class ServerConfig:
    """Where the server listens, how it batches, and the limits it enforces."""

    endpoint: str = "tcp://127.0.0.1:5555"
    """ROUTER endpoint for actor loops (``tcp://127.0.0.1:*`` picks a free port)."""
    weights_endpoint: str = "tcp://127.0.0.1:5556"
    """ROUTER endpoint for learners publishing weights; empty disables hot swap."""
    name: str = "limbic-serve"
    """Shown to clients in the hello reply."""
    max_batch: int = 16
    """Most requests (critic: most frame pairs) in one model call."""
    max_wait_us: int = 500
    """Longest a request waits for others to join its batch, while others may still come."""
    max_message_bytes: int = 16 * 2**20
    """Largest request frame; the socket disconnects a peer that sends more (ZMQ_MAXMSGSIZE)."""
    max_weights_bytes: int = 2**30
    """Largest weight update on the weights endpoint."""
    heartbeat_interval_s: float = 1.0
    """How often clients are told to send a heartbeat when idle."""
    client_timeout_s: float = 10.0
    """A client silent this long is forgotten."""
    allow_plaintext_remote: bool = False
    """Allow binding a non-loopback address without CURVE (trusted networks only)."""
    curve: CurveConfig = field(default_factory=CurveConfig)
    """CURVE security for both endpoints."""

    def __post_init__(self) -> None:
        from limbic.launch.config import require

        require(self.max_batch >= 1, "server.max_batch", f"must be >= 1, got {self.max_batch}")
        require(
            self.max_wait_us >= 0, "server.max_wait_us", f"must be >= 0, got {self.max_wait_us}"
        )
        require(
            self.max_message_bytes >= 1024,
            "server.max_message_bytes",
            f"must be >= 1024, got {self.max_message_bytes}",
        )
        require(self.heartbeat_interval_s > 0, "server.heartbeat_interval_s", "must be > 0")
        require(
            self.client_timeout_s > self.heartbeat_interval_s,
            "server.client_timeout_s",
            f"must exceed heartbeat_interval_s ({self.heartbeat_interval_s}), got {self.client_timeout_s}",
        )
        for key in ("endpoint", "weights_endpoint"):
            endpoint = getattr(self, key)
            if endpoint and not is_loopback(endpoint):
                require(
                    self.curve.enabled or self.allow_plaintext_remote,
                    f"server.{key}",
                    f"{endpoint} is reachable beyond this machine; set server.curve.enabled=true "
                    "(see limbic-serve keygen) or server.allow_plaintext_remote=true on a trusted network",
                )
        if self.curve.enabled:
            require(
                bool(self.curve.server_secret_key),
                "server.curve.server_secret_key",
                "required when CURVE is enabled",
            )


def is_loopback(endpoint: str) -> bool:
    """True for ipc/inproc endpoints and tcp endpoints bound to 127.0.0.1, ::1 or localhost."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = urlparse(endpoint).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


@dataclass
class ClientState:
    """What the server keeps per client, dropped after ``client_timeout_s`` of silence."""

    name: str = ""
    first_seen: float = 0.0
    last_seen: float = 0.0
    requests: int = 0


@dataclass
class _Pending:
    envelope: list[bytes]
    client: bytes
    request: ActRequest | CriticRequest
    decoded_at: float
    decode_us: float


class _Batcher:
    """Decoded requests waiting for the batch thread, one FIFO per kind."""

    def __init__(self, max_batch: int, max_wait_s: float):
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._queues: dict[str, deque[_Pending]] = {"act": deque(), "critic": deque()}
        self._recent: dict[str, dict[bytes, float]] = {"act": {}, "critic": {}}
        self._cond = threading.Condition()

    def put(self, kind: str, item: _Pending) -> None:
        with self._cond:
            self._queues[kind].append(item)
            self._recent[kind][item.client] = item.decoded_at
            self._cond.notify()

    def __len__(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def take(self, idle_timeout_s: float) -> tuple[str, list[_Pending]]:
        """The next batch (oldest kind first), or ``("", [])`` after ``idle_timeout_s`` idle."""
        with self._cond:
            if not self._cond.wait_for(lambda: any(self._queues.values()), timeout=idle_timeout_s):
                return "", []
            kind = min((q[0].decoded_at, k) for k, q in self._queues.items() if q)[1]
            queue, recent = self._queues[kind], self._recent[kind]
            deadline = queue[0].decoded_at + self.max_wait_s
            while len(queue) < self.max_batch:
                now = time.perf_counter()
                for client in [c for c, t in recent.items() if now - t > _RECENT_S]:
                    del recent[client]
                waiting = {p.client for p in queue}
                # Wait only for clients that may still send: a lone client never waits.
                if now >= deadline or not (recent.keys() - waiting):
                    break
                self._cond.wait(deadline - now)
            return kind, [queue.popleft() for _ in range(min(len(queue), self.max_batch))]


def _encode_timed(reply: Any) -> bytes:
    """Encode a reply, filling in its own encoding time: pack once to time it, then for real."""
    timings = getattr(reply, "timings", None)
    if timings is None:
        return encode(reply)
    t0 = time.perf_counter()
    encode(reply)
    timings.encode_us = (time.perf_counter() - t0) * 1e6
    return encode(reply)


class InferenceServer:
    """Serves a policy and/or a progress critic over ZeroMQ; use as a context manager.

    ``endpoint`` and ``weights_endpoint`` hold the bound addresses once started.
    """

    def __init__(
        self,
        config: ServerConfig,
        policy: ModelRunner | None = None,
        critic: ModelRunner | None = None,
    ):
        if policy is None and critic is None:
            raise ValueError("InferenceServer needs a policy, a critic or both")
        if policy is not None and policy.kind != "policy":
            raise ValueError(f"policy runner serves a {policy.kind}")
        if critic is not None and critic.kind != "critic":
            raise ValueError(f"critic runner serves a {critic.kind}")
        self.config = config
        self.policy, self.critic = policy, critic
        hw = [r.spec.image_hw for r in (policy, critic) if r is not None]
        self.limits = Limits(
            max_message_bytes=config.max_message_bytes, max_image_pixels=max(h * w for h, w in hw)
        )
        self.clients: dict[bytes, ClientState] = {}
        self.counters = {
            "requests": 0,
            "errors": 0,
            "dropped_frames": 0,
            "undeliverable": 0,
            "batches": 0,
        }
        self.endpoint = ""
        self.weights_endpoint = ""
        self._batcher = _Batcher(config.max_batch, config.max_wait_us * 1e-6)
        self._staged: dict[str, tuple[Any, int, threading.Event]] = {}
        self._staged_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ctx: zmq.Context | None = None
        self._auth = None
        self._errors: list[BaseException] = []

    # ------------------------------------------------------------ lifecycle

    def start(self) -> InferenceServer:
        """Bind the sockets and start serving in background threads; returns self."""
        cfg = self.config
        self._ctx = zmq.Context()
        try:
            keys = None
            if cfg.curve.enabled:
                keys = auth.load_keypair(cfg.curve.server_secret_key)
                self._auth = auth.start_authenticator(self._ctx, cfg.curve.authorized_clients_dir)
            router = self._ctx.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 0)
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            router.setsockopt(zmq.MAXMSGSIZE, cfg.max_message_bytes)
            if keys:
                auth.make_server(router, *keys)
            router.bind(cfg.endpoint)
            self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
            pull = self._ctx.socket(zmq.PULL)
            pull.setsockopt(zmq.LINGER, 0)
            inproc = f"inproc://replies-{id(self)}"
            pull.bind(inproc)
            push = self._ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            push.setsockopt(zmq.SNDHWM, 0)
            push.connect(inproc)
            receiver = None
            if cfg.weights_endpoint:
                runners = {
                    k: r
                    for k, r in (("policy", self.policy), ("critic", self.critic))
                    if r is not None
                }
                receiver = WeightReceiver(
                    self._ctx,
                    cfg.weights_endpoint,
                    runners,
                    self._stage,
                    cfg.max_weights_bytes,
                    keys,
                    self._stop,
                )
                self.weights_endpoint = receiver.endpoint
        except BaseException:
            self._close_context()
            raise
        self._threads = [
            threading.Thread(
                target=self._guard,
                args=(self._io_loop, router, pull),
                name="limbic-serve-io",
                daemon=True,
            ),
            threading.Thread(
                target=self._guard,
                args=(self._batch_loop, push),
                name="limbic-serve-batch",
                daemon=True,
            ),
        ]
        if receiver is not None:
            self._threads.append(
                threading.Thread(
                    target=self._guard,
                    args=(receiver.run,),
                    name="limbic-serve-weights",
                    daemon=True,
                )
            )
        for thread in self._threads:
            thread.start()
        log.info(
            "serving %s on %s (weights on %s)",
            self._served(),
            self.endpoint,
            self.weights_endpoint or "-",
        )
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the threads and close every socket; safe to call twice."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s)
        alive = [t.name for t in self._threads if t.is_alive()]
        self._threads = []
        self._close_context()
        if alive:
            raise RuntimeError(f"server threads {alive} did not stop within {timeout_s} s")

    def _close_context(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None

    def __enter__(self) -> InferenceServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def check(self) -> None:
        """Raise the error that killed a server thread, if any (threads never die on bad input)."""
        if self._errors:
            raise RuntimeError("a server thread died") from self._errors[0]

    def stats(self) -> dict[str, Any]:
        """Counters, connected clients and live versions (a snapshot, for logs and tests)."""
        return {
            **self.counters,
            "clients": len(self.clients),
            "queued": len(self._batcher),
            "policy_version": -1 if self.policy is None else self.policy.version,
            "critic_version": -1 if self.critic is None else self.critic.version,
        }

    def _served(self) -> str:
        return " + ".join(
            f"{r.kind} ({r.backend}, v{r.version})"
            for r in (self.policy, self.critic)
            if r is not None
        )

    def _guard(self, loop: Any, *args: Any) -> None:
        try:
            loop(*args)
        except BaseException as e:
            # Only a bug in the server itself lands here; record it and stop the others.
            log.exception("server thread %s died", threading.current_thread().name)
            self._errors.append(e)
            self._stop.set()
        finally:
            for sock in args:
                if isinstance(sock, zmq.Socket):
                    sock.close(linger=0)

    # ------------------------------------------------------------ I/O thread

    def _io_loop(self, router: zmq.Socket, pull: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(pull, zmq.POLLIN)
        next_sweep = time.monotonic()
        while not self._stop.is_set():
            events = dict(poller.poll(100))
            if pull in events:
                while True:
                    try:
                        frames = pull.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._send(router, frames)
            if router in events:
                for _ in range(4 * self.config.max_batch):
                    try:
                        frames = router.recv_multipart(zmq.NOBLOCK, copy=True)
                    except zmq.Again:
                        break
                    self._handle(router, frames)
            if time.monotonic() >= next_sweep:
                self._forget_silent_clients()
                next_sweep = time.monotonic() + min(1.0, self.config.client_timeout_s / 4)

    def _send(self, router: zmq.Socket, frames: list[bytes]) -> None:
        try:
            router.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self.counters["undeliverable"] += 1  # the client is not reading: never block on it
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
            self.counters["undeliverable"] += 1
            self.clients.pop(frames[0], None)

    def _forget_silent_clients(self) -> None:
        cutoff = time.monotonic() - self.config.client_timeout_s
        for client in [c for c, s in self.clients.items() if s.last_seen < cutoff]:
            log.info(
                "forgetting client %s (%s): silent for %.0f s",
                client.hex(),
                self.clients[client].name,
                self.config.client_timeout_s,
            )
            del self.clients[client]

    def _reply(self, router: zmq.Socket, envelope: list[bytes], message: Any) -> None:
        if isinstance(message, ErrorReply):
            self.counters["errors"] += 1
        self._send(router, [*envelope, encode(message)])

    def _handle(self, router: zmq.Socket, frames: list[bytes]) -> None:
        t0 = time.perf_counter()
        # DEALER peers send [payload], REQ peers [b"", payload]; anything else cannot be routed back.
        envelope, payload = frames[:-1], frames[-1]
        if len(envelope) not in (1, 2) or (len(envelope) == 2 and envelope[1] != b""):
            self.counters["dropped_frames"] += 1
            return
        client = envelope[0]
        now = time.monotonic()
        state = self.clients.get(client)
        if state is None:
            state = self.clients[client] = ClientState(first_seen=now)
        state.last_seen = now
        self.counters["requests"] += 1
        try:
            message = decode(payload, self.limits, accept=("hello", "heartbeat", "act", "critic"))
            if isinstance(message, Hello):
                state.name = message.client
                self._reply(router, envelope, self._info(message.id))
            elif isinstance(message, Heartbeat):
                self._reply(router, envelope, self._heartbeat(message.id))
            else:
                state.requests += 1
                kind = self._validate(message)
                decode_us = (time.perf_counter() - t0) * 1e6
                self._batcher.put(
                    kind, _Pending(envelope, client, message, time.perf_counter(), decode_us)
                )
        except ProtocolError as e:
            self._reply(router, envelope, ErrorReply.of(e.request_id, e))

    def _info(self, request_id: int) -> ServerInfo:
        cfg = self.config
        runners = [r for r in (self.policy, self.critic) if r is not None]
        return ServerInfo(
            id=request_id,
            server=cfg.name,
            max_message_bytes=cfg.max_message_bytes,
            heartbeat_interval_ms=int(cfg.heartbeat_interval_s * 1000),
            client_timeout_ms=int(cfg.client_timeout_s * 1000),
            policy=None if self.policy is None else self.policy.spec,
            critic=None if self.critic is None else self.critic.spec,
            policy_version=-1 if self.policy is None else self.policy.version,
            critic_version=-1 if self.critic is None else self.critic.version,
            backend="+".join(sorted({r.backend for r in runners})),
        )

    def _heartbeat(self, request_id: int) -> Heartbeat:
        return Heartbeat(
            id=request_id,
            time_ns=time.time_ns(),
            policy_version=-1 if self.policy is None else self.policy.version,
            critic_version=-1 if self.critic is None else self.critic.version,
        )

    def _validate(self, message: ActRequest | CriticRequest) -> str:
        """Check a request against the served model's spec; return its batch kind."""
        if isinstance(message, ActRequest):
            if self.policy is None:
                raise ProtocolError(
                    ErrorCode.NOT_SERVED, "type", "this server hosts no policy", message.id
                )
            spec = self.policy.spec
            try:
                message.observation.validate(
                    views=spec.views, state_dim=spec.state_dim, image_hw=spec.image_hw
                )
            except ContractError as e:
                raise ProtocolError(
                    ErrorCode.BAD_FIELD, f"obs.{e.field}", str(e).split(": ", 1)[1], message.id
                ) from None
            return "act"
        if self.critic is None:
            raise ProtocolError(
                ErrorCode.NOT_SERVED, "type", "this server hosts no progress critic", message.id
            )
        spec = self.critic.spec
        frames = [(f"frames[{i}]", f) for i, f in enumerate(message.frames)]
        for path, frame in frames + ([("goal", message.goal)] if message.goal is not None else []):
            missing = [v for v in spec.views if v not in frame]
            if missing:
                raise ProtocolError(
                    ErrorCode.BAD_FIELD,
                    path,
                    f"missing view(s) {missing}; have {sorted(frame)}",
                    message.id,
                )
            for view in spec.views:
                try:
                    check_image(f"{path}[{view!r}]", frame[view], spec.image_hw)
                except ContractError as e:
                    raise ProtocolError(
                        ErrorCode.BAD_FIELD, e.field, str(e).split(": ", 1)[1], message.id
                    ) from None
        return "critic"

    # ------------------------------------------------------------ batch thread

    def _stage(self, target: str, prepared: Any, version: int) -> threading.Event:
        """Called by the weight thread: hand over prepared weights; the event fires once live."""
        live = threading.Event()
        with self._staged_lock:
            self._staged[target] = (prepared, version, live)
        return live

    def _apply_staged(self) -> None:
        with self._staged_lock:
            staged, self._staged = self._staged, {}
        for target, (prepared, version, live) in staged.items():
            runner = self.policy if target == "policy" else self.critic
            runner.swap(prepared, version)
            log.info("%s weights v%d are live", target, version)
            live.set()

    def _batch_loop(self, push: zmq.Socket) -> None:
        while not self._stop.is_set():
            self._apply_staged()
            kind, batch = self._batcher.take(idle_timeout_s=0.05)
            if not batch:
                continue
            self._apply_staged()
            started = time.perf_counter()
            live, replies = [], []
            for p in batch:
                budget = p.request.timeout_ms
                if budget is not None and (started - p.decoded_at) * 1e3 > budget:
                    waited = (started - p.decoded_at) * 1e3
                    error = ProtocolError(
                        ErrorCode.DEADLINE_EXCEEDED,
                        "timeout_ms",
                        f"queued {waited:.1f} ms, past the {budget} ms budget",
                    )
                    replies.append((p, ErrorReply.of(p.request.id, error)))
                else:
                    live.append(p)
            if live:
                try:
                    run = self._run_act if kind == "act" else self._run_critic
                    replies += run(live, started)
                except Exception as e:  # a model failure fails this batch, never the server
                    log.exception("%s batch of %d failed", kind, len(live))
                    text = traceback.format_exc(limit=8)
                    replies += [
                        (
                            p,
                            ErrorReply(
                                p.request.id,
                                ErrorCode.INTERNAL,
                                f"{type(e).__name__}: {e}",
                                None,
                                text,
                            ),
                        )
                        for p in live
                    ]
                self.counters["batches"] += 1
            for p, reply in replies:
                if isinstance(reply, ErrorReply):
                    self.counters["errors"] += 1
                push.send_multipart([*p.envelope, _encode_timed(reply)])

    def _run_act(self, batch: list[_Pending], started: float) -> list[tuple[_Pending, Any]]:
        runner = self.policy
        spec = runner.spec
        h, w = spec.image_hw
        images = np.empty((len(batch), len(spec.views), h, w, 3), dtype=np.uint8)
        state = np.empty((len(batch), spec.state_dim), dtype=np.float32)
        for i, p in enumerate(batch):
            obs = p.request.observation
            for j, view in enumerate(spec.views):
                images[i, j] = obs.images[view]
            state[i] = obs.state
        lang = runner.encoder.encode([p.request.observation.instruction for p in batch])
        t_infer = time.perf_counter()
        (actions,) = runner.run(images, state, lang)
        t_done = time.perf_counter()
        expected = (len(batch), spec.chunk_len, spec.action_dim)
        if tuple(actions.shape) != expected:
            raise RuntimeError(
                f"policy returned actions of shape {tuple(actions.shape)}, expected {expected}"
            )
        version = runner.version
        replies = []
        for i, p in enumerate(batch):
            chunk = np.ascontiguousarray(actions[i], dtype=np.float32)
            if not np.isfinite(chunk).all():
                error = ProtocolError(
                    ErrorCode.INVALID_OUTPUT,
                    "actions",
                    f"policy v{version} produced non-finite actions",
                )
                replies.append((p, ErrorReply.of(p.request.id, error)))
                continue
            timings = self._timings(p, started, t_infer, t_done, len(batch))
            replies.append((p, ActReply(p.request.id, chunk, version, timings)))
        return replies

    def _timings(
        self, p: _Pending, started: float, t_infer: float, t_done: float, size: int
    ) -> Timings:
        return Timings(
            queue_us=(started - p.decoded_at) * 1e6,
            decode_us=p.decode_us,
            assemble_us=(t_infer - started) * 1e6,
            infer_us=(t_done - t_infer) * 1e6,
            batch_size=size,
        )

    def _run_critic(self, batch: list[_Pending], started: float) -> list[tuple[_Pending, Any]]:
        """Expand each window into frame pairs, run them in chunks of max_batch, fuse values."""
        runner = self.critic
        spec = runner.spec
        rows_a, rows_b, row_lang, layout = [], [], [], []
        lang = runner.encoder.encode([p.request.instruction for p in batch])
        for k, p in enumerate(batch):
            req = p.request
            stacked = [np.stack([f[v] for v in spec.views]) for f in req.frames]
            n = len(stacked)
            pairs = [(stacked[i], stacked[i + 1]) for i in range(n - 1)]  # incremental
            pairs += [
                (stacked[0], stacked[t]) for t in range(2, n)
            ]  # forward (t = 1 is the first incremental)
            if req.goal is not None:
                goal = np.stack([req.goal[v] for v in spec.views])
                pairs += [(goal, stacked[t]) for t in range(1, n)]  # backward
            layout.append((len(rows_a), n))
            for a, b in pairs:
                rows_a.append(a)
                rows_b.append(b)
                row_lang.append(k)
        images_a, images_b = np.stack(rows_a), np.stack(rows_b)
        lang_rows = lang[np.asarray(row_lang)]
        t_infer = time.perf_counter()
        progress, done = [], []
        step = self.config.max_batch
        for s in range(0, len(rows_a), step):
            c, d = runner.run(
                images_a[s : s + step], images_b[s : s + step], lang_rows[s : s + step]
            )
            progress.append(c)
            done.append(d)
        t_done = time.perf_counter()
        progress, done = np.concatenate(progress).reshape(-1), np.concatenate(done).reshape(-1)
        if progress.shape != (len(rows_a),) or done.shape != (len(rows_a),):
            raise RuntimeError(
                f"critic returned {progress.shape}/{done.shape}, expected ({len(rows_a)},) each"
            )
        version = runner.version
        replies = []
        for (start, n), p in zip(layout, batch, strict=True):
            end = start + (n - 1) + (n - 2) + ((n - 1) if p.request.goal is not None else 0)
            c_all, d_all = progress[start:end], done[start:end]
            if not (np.isfinite(c_all).all() and np.isfinite(d_all).all()):
                error = ProtocolError(
                    ErrorCode.INVALID_OUTPUT,
                    "progress",
                    f"critic v{version} produced non-finite outputs",
                )
                replies.append((p, ErrorReply.of(p.request.id, error)))
                continue
            c_all = np.clip(c_all, -1.0, 1.0)
            c_inc = c_all[: n - 1]
            c_fwd = np.concatenate([c_inc[:1], c_all[n - 1 : 2 * n - 3]])
            c_bwd = c_all[2 * n - 3 :] if p.request.goal is not None else None
            value = _value.fused_value(c_inc, c_fwd, c_bwd, p.request.phi0)
            done_prob = np.clip(d_all[: n - 1], 0.0, 1.0).astype(np.float32)
            timings = self._timings(p, started, t_infer, t_done, len(batch))
            replies.append(
                (
                    p,
                    CriticReply(
                        p.request.id, c_inc.astype(np.float32), done_prob, value, version, timings
                    ),
                )
            )
        return replies


@dataclass
class ServeConfig:
    """``limbic-serve``: which models, on which backend, behind which server settings."""

    backend: str = "torch"
    """``torch`` or ``onnx`` (ONNX Runtime; files from ``limbic-export``)."""
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    log_level: str = "INFO"
    """Python logging level."""
    server: ServerConfig = field(default_factory=ServerConfig)
    """Endpoints, batching and limits."""
    policy: ModelConfig = field(default_factory=ModelConfig)
    """The served policy (empty target: none)."""
    critic: ModelConfig = field(default_factory=ModelConfig)
    """The served progress critic (empty target: none)."""

    def __post_init__(self) -> None:
        from limbic.launch.config import require

        require(
            self.backend in ("torch", "onnx"),
            "backend",
            f"expected torch or onnx, got {self.backend!r}",
        )


def serve(cfg: ServeConfig, stop: threading.Event | None = None) -> None:
    """Build the configured runners and serve until ``stop`` is set or SIGINT/SIGTERM arrives."""
    import signal

    policy = build_runner(cfg.policy, "policy", cfg.backend, cfg.device)
    critic = build_runner(cfg.critic, "critic", cfg.backend, cfg.device)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    with InferenceServer(cfg.server, policy, critic) as server:
        print(
            f"limbic-serve: ready on {server.endpoint} (weights: {server.weights_endpoint or 'off'})",
            flush=True,
        )
        while not stop.wait(0.5):
            server.check()
