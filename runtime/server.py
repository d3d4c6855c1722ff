"""The inference server: one ROUTER socket, many actor loops, batched policy and critic calls.

The **serving thread** owns the ROUTER. It reads and decodes every request as it arrives
(answering hello, heartbeat and bad requests at once), queues act and critic requests in a
:class:`~limbic.runtime.batching.Batcher`, and runs a batch when it is full, when its
``max_wait_us`` window has passed, or at once when no other client is due. An idle server
calls the model on the serving thread itself, which saves two thread wake-ups per round
trip; a busy one (more requests queued or due) hands the call to the **model thread** and
keeps reading, decoding and timestamping requests meanwhile. Staged weights are swapped in
between batches.

A **weight thread** (:mod:`limbic.runtime.weights`) receives new weights from a learner and
loads them off the serving path.

Nothing a client sends can stop the server: every failure is an error reply naming the field.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import zmq

from limbic.contracts import ContractError, check_image
from limbic.runtime import auth
from limbic.runtime.backends import ModelConfig, ModelRunner, build_runner
from limbic.runtime.batching import ActBatch, Batch, Batcher, CriticBatch, Pending
from limbic.runtime.protocol import (
    ActRequest,
    CriticRequest,
    ErrorCode,
    ErrorReply,
    Heartbeat,
    Hello,
    Limits,
    ProtocolError,
    ServerInfo,
    decode,
    encode,
    encode_timed,
)
from limbic.runtime.weights import WeightReceiver

log = logging.getLogger(__name__)

# Plain ints: arithmetic on pyzmq's IntFlag constants builds enum objects on the hot path.
_NOBLOCK, _SNDMORE, _POLLIN = int(zmq.NOBLOCK), int(zmq.SNDMORE), int(zmq.POLLIN)


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
    """Largest request, all frames together; one frame above it disconnects the peer (ZMQ_MAXMSGSIZE)."""
    max_weights_bytes: int = 2**30
    """Largest weight update on the weights endpoint (likewise per frame and in all)."""
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


class _Waiter:
    """Waits for socket input or the model thread, with microsecond timeouts.

    ``zmq_poll`` counts whole milliseconds, too coarse for a 500 us batching window, so this
    selects on the socket's ``FD`` instead. That FD is edge-triggered: it is meaningful only
    after ``EVENTS`` has been read and the socket drained, which the loop does before every wait.
    """

    def __init__(self, sock: zmq.Socket, model_fd: int):
        self._sock, self._fds = sock, [sock.getsockopt(zmq.FD), model_fd]

    def __call__(self, timeout_s: float) -> None:
        deadline = time.perf_counter() + timeout_s
        while not self._sock.getsockopt(zmq.EVENTS) & _POLLIN:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            readable, _, _ = select.select(self._fds, [], [], remaining)
            if self._fds[1] in readable:
                return


class _ModelThread:
    """Runs one batch's model call in the background and signals completion through a pipe."""

    def __init__(self):
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="limbic-model")

    @property
    def fd(self) -> int:
        """Readable once a submitted call has finished."""
        return self._read_fd

    def submit(self, batch: Batch) -> Future:
        """Start ``batch.call_model()``."""
        future = self._pool.submit(batch.call_model)
        future.add_done_callback(lambda _: os.write(self._write_fd, b"."))
        return future

    def clear(self) -> None:
        """Consume completion signals."""
        try:
            while os.read(self._read_fd, 64):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        """Wait for a running call, then release the thread and the pipe."""
        self._pool.shutdown(wait=True)
        os.close(self._read_fd)
        os.close(self._write_fd)


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
        self.counters = {"requests": 0, "errors": 0, "undeliverable": 0, "batches": 0}
        self.endpoint = ""
        self.weights_endpoint = ""
        self._batcher = Batcher(config.max_batch, config.max_wait_us * 1e-6)
        self._infer_s: dict[str, float] = {}  # the last model call's duration, per kind
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
                args=(self._serve_loop, router),
                name="limbic-serve",
                daemon=True,
            )
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

    # ------------------------------------------------------------ serving thread

    def _serve_loop(self, router: zmq.Socket) -> None:
        model = _ModelThread()
        wait = _Waiter(router, model.fd)
        running: tuple[Batch, Future] | None = None
        next_sweep = time.monotonic()
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_sweep:  # also under sustained load
                    self._forget_silent_clients()
                    self._batcher.forget(time.perf_counter())
                    next_sweep = time.monotonic() + min(1.0, self.config.client_timeout_s / 4)
                self._drain(router)
                if running is not None:
                    if running[1].done():
                        model.clear()
                        self._reply_batch(router, running[0])
                        running = None
                        continue
                    wait(0.1)
                    continue
                self._apply_staged()  # between batches only
                now = time.perf_counter()
                kind, wait_s = self._batcher.plan(now)
                if kind and wait_s <= 0:
                    batch = self._make_batch(kind)
                    # Busy (more requests queued, or another client's due before this call would
                    # end): call the model on the model thread so this one keeps reading and
                    # timestamping requests. Idle: call it here, saving two thread wake-ups.
                    horizon = now + self._infer_s.get(kind, 0.0)
                    batch_clients = {p.client for p in batch.requests}
                    if not batch.empty and (
                        len(self._batcher)
                        or self._batcher.others_due(kind, now, horizon, batch_clients)
                    ):
                        running = (batch, model.submit(batch))
                        continue
                    batch.call_model()
                    self._reply_batch(router, batch)
                    continue
                wait(wait_s if kind else 0.1)
        finally:
            model.close()

    def _drain(self, router: zmq.Socket) -> None:
        """Receive and decode what has arrived (bounded, so a flood cannot starve the model)."""
        for _ in range(4 * self.config.max_batch):
            # Asking EVENTS is cheaper than a failed non-blocking recv raising zmq.Again.
            if not router.getsockopt(zmq.EVENTS) & _POLLIN:
                return
            self._handle(router, router.recv_multipart(_NOBLOCK, copy=False))

    def _send(self, router: zmq.Socket, frames: list[Any]) -> None:
        try:
            # Frame by frame with int flags: send_multipart ORs IntFlag enums per frame.
            for frame in frames[:-1]:
                router.send(frame, _NOBLOCK | _SNDMORE)
            router.send(frames[-1], _NOBLOCK)
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
        self._send(router, [*envelope, *encode(message)])

    def _handle(self, router: zmq.Socket, frames: list[zmq.Frame]) -> None:
        t0 = time.perf_counter()
        # After the peer identity the ROUTER added: a DEALER's [header, *data], a REQ's
        # [b"", header, *data]. The reply goes back behind the same envelope.
        split = 2 if len(frames) > 2 and not len(frames[1]) else 1
        envelope = [f.bytes for f in frames[:split]]
        payload = [f.buffer for f in frames[split:]]
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
                    kind, Pending(envelope, client, message, time.perf_counter(), decode_us)
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
            try:  # decoding validated the observation; what is left is the model's spec
                message.obs.check_spec(spec.views, spec.state_dim, spec.image_hw)
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
        if not self._staged:  # the common case, read without the lock (the swap below takes it)
            return
        with self._staged_lock:
            staged, self._staged = self._staged, {}
        for target, (prepared, version, live) in staged.items():
            runner = self.policy if target == "policy" else self.critic
            runner.swap(prepared, version)
            log.info("%s weights v%d are live", target, version)
            live.set()

    def _make_batch(self, kind: str) -> Batch:
        requests = self._batcher.pop(kind)
        if kind == "act":
            return ActBatch(requests, self.policy, self.config.max_batch)
        return CriticBatch(requests, self.critic, self.config.max_batch)

    def _reply_batch(self, router: zmq.Socket, batch: Batch) -> None:
        if not batch.empty:
            self.counters["batches"] += 1
            self._infer_s[batch.kind] = batch.t_done - batch.t_infer
        for p, reply in batch.replies():
            if isinstance(reply, ErrorReply):
                self.counters["errors"] += 1
                payload = encode(reply)
            else:
                payload = encode_timed(reply)
            self._send(router, [*p.envelope, *payload])


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
