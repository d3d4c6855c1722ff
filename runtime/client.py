"""The actor-side client of the inference server: deadlines, typed errors, reconnects.

Needs only numpy, pyzmq and msgpack (and OpenCV when sending JPEG), never torch::

    with InferenceClient("tcp://127.0.0.1:5555", timeout_s=0.5) as client:
        reply = client.act(obs)          # reply.actions: float32[chunk, A]

Every wait has a deadline. A timeout raises :class:`ServerTimeoutError` and throws the socket
away (so a late reply can never be mistaken for the next one); the next call reconnects and
says hello again. A background heartbeat notices a dead server while the client is idle
(:attr:`InferenceClient.server_alive`) and reconnects when it is back.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq

from limbic.contracts import ContractError, Observation
from limbic.runtime import auth
from limbic.runtime.protocol import (
    IMAGE_FORMATS,
    PROTOCOL_VERSION,
    ActReply,
    ActRequest,
    CriticReply,
    CriticRequest,
    ErrorCode,
    ErrorReply,
    Heartbeat,
    Hello,
    Limits,
    Message,
    ProtocolError,
    ServerInfo,
    decode,
    encode,
)


def connect_dealer(
    ctx: zmq.Context, endpoint: str, limits: Limits, server_key: Any, keypair: Any
) -> zmq.Socket:
    """A DEALER connected to ``endpoint``: no linger, the size limit enforced by the socket, and
    CURVE when a server key is given (what every limbic client endpoint uses)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes)
    if server_key:
        auth.make_client(sock, server_key, keypair)
    sock.connect(endpoint)
    return sock


class InferenceError(RuntimeError):
    """Base of every error the client raises about the server or the exchange."""


class ServerTimeoutError(InferenceError, TimeoutError):
    """No reply within the deadline; the server is down, overloaded or unreachable."""


class ServerError(InferenceError):
    """The server answered with an error reply: ``code``, ``field`` and its message."""

    def __init__(self, reply: ErrorReply):
        self.code = ErrorCode(reply.code)
        self.field = reply.field
        self.server_traceback = reply.traceback
        super().__init__(reply.message)


class VersionMismatchError(InferenceError):
    """Client and server speak different protocol versions; upgrade the older side."""


class RequestTooLargeError(InferenceError):
    """The encoded request exceeds the server's ``max_message_bytes``; it was not sent."""


# Plain ints: arithmetic on pyzmq's IntFlag constants builds enum objects on the hot path.
_NOBLOCK, _SNDMORE, _POLLIN = int(zmq.NOBLOCK), int(zmq.SNDMORE), int(zmq.POLLIN)

_REPLY_TYPES = (
    "hello_reply",
    "heartbeat",
    "act_reply",
    "critic_reply",
    "error",
    "weights_reply",
    "episode_ack",
    "learner_status_reply",
)


def _read_key(key: bytes | str | os.PathLike | None) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return auth.load_public_key(key)


class Connection:
    """One DEALER socket to a server endpoint with deadline-bound request/reply.

    Not thread-safe by itself; :class:`InferenceClient` serialises access with a lock.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        server_public_key: bytes | str | os.PathLike | None = None,
        client_secret_key: str | os.PathLike | None = None,
        max_reply_bytes: int = 64 * 2**20,
        context: zmq.Context | None = None,
    ):
        self.endpoint = endpoint
        self._server_key = _read_key(server_public_key)
        self._keypair = auth.load_keypair(client_secret_key) if client_secret_key else None
        if self._keypair and not self._server_key:
            raise ValueError(
                "client_secret_key needs server_public_key (CURVE needs both sides' keys)"
            )
        self._ctx = context or zmq.Context.instance()
        self._limits = Limits(max_message_bytes=max_reply_bytes, max_map_len=4096)
        self._sock: zmq.Socket | None = None
        self._ids = itertools.count(int.from_bytes(os.urandom(3), "little") << 20)

    def next_id(self) -> int:
        """A fresh request id."""
        return next(self._ids)

    def socket(self) -> zmq.Socket:
        """The DEALER socket, opened and connected on first use (for callers that pipeline)."""
        return self._socket()

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            self._sock = connect_dealer(
                self._ctx, self.endpoint, self._limits, self._server_key, self._keypair
            )
        return self._sock

    def reset(self) -> None:
        """Drop the socket (and anything queued on it); the next request opens a fresh one."""
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def request(
        self, message: Message, timeout_s: float, *, max_bytes: int | None = None, **encoding: Any
    ) -> Message:
        """Send ``message`` and return the reply with the same id, within ``timeout_s``.

        Raises :class:`ServerTimeoutError`, :class:`ServerError`, :class:`VersionMismatchError` or
        :class:`RequestTooLargeError`.
        """
        deadline = time.monotonic() + timeout_s
        frames = encode(message, **encoding)
        size = sum(len(f) if isinstance(f, bytes) else f.nbytes for f in frames)
        if max_bytes is not None and size > max_bytes:
            raise RequestTooLargeError(
                f"{message.TYPE} request is {size} bytes, above the server's limit of {max_bytes}; "
                "send JPEG frames (image_format='jpeg'), fewer frames, or raise server.max_message_bytes"
            )
        sock = self._socket()
        try:
            # Frame by frame with int flags (send_multipart ORs IntFlag enums per frame). Once the
            # first frame is queued ZeroMQ takes the rest: a message is all or nothing.
            for frame in frames[:-1]:
                sock.send(frame, _NOBLOCK | _SNDMORE)
            sock.send(frames[-1], _NOBLOCK)
        except zmq.Again:
            self.reset()
            raise ServerTimeoutError(
                f"cannot queue a request to {self.endpoint}: send buffer full; is the server up?"
            ) from None
        while True:
            remaining_ms = (deadline - time.monotonic()) * 1000
            if remaining_ms <= 0 or not sock.poll(max(1, int(remaining_ms)), _POLLIN):
                self.reset()
                raise ServerTimeoutError(
                    f"no reply to {message.TYPE} from {self.endpoint} within {timeout_s:.3f} s; check that "
                    "limbic-serve runs there and is reachable (the next call reconnects)"
                )
            try:
                reply = decode(sock.recv_multipart(), self._limits, accept=_REPLY_TYPES)
            except ProtocolError as e:
                self.reset()
                if e.code == ErrorCode.VERSION_MISMATCH:
                    raise VersionMismatchError(
                        f"server at {self.endpoint} replied in another protocol version: {e}"
                    ) from None
                raise InferenceError(f"unreadable reply from {self.endpoint}: {e}") from None
            if reply.id is not None and reply.id != message.id:
                continue  # a reply to an earlier request on this socket; not ours
            if isinstance(reply, ErrorReply):
                if reply.code == ErrorCode.VERSION_MISMATCH:
                    raise VersionMismatchError(
                        f"{self.endpoint}: {reply.message}; upgrade the older side"
                    )
                raise ServerError(reply)
            return reply

    def close(self) -> None:
        """Close the socket."""
        self.reset()


class InferenceClient:
    """Asks a limbic inference server for action chunks and progress judgements.

    ``server_public_key`` (a ``.key`` file or raw key) and ``client_secret_key`` (a
    ``.key_secret`` file) enable CURVE for a server that requires it.
    """

    def __init__(
        self,
        endpoint: str = "tcp://127.0.0.1:5555",
        *,
        timeout_s: float = 1.0,
        image_format: str = "raw",
        jpeg_quality: int = 90,
        name: str = "limbic-client",
        heartbeat_interval_s: float | None = None,
        validate: bool = True,
        server_public_key: bytes | str | os.PathLike | None = None,
        client_secret_key: str | os.PathLike | None = None,
    ):
        if image_format not in IMAGE_FORMATS:
            raise ContractError(
                "image_format", f"expected one of {IMAGE_FORMATS}, got {image_format!r}"
            )
        if timeout_s <= 0:
            raise ContractError("timeout_s", f"expected a positive deadline, got {timeout_s}")
        self.timeout_s = timeout_s
        self.image_format, self.jpeg_quality = image_format, jpeg_quality
        self.name = name
        self.validate = validate
        self.info: ServerInfo | None = None
        self.server_alive = False
        self.last_contact = 0.0
        self.last_error: InferenceError | None = None
        self._heartbeat_interval_s = heartbeat_interval_s
        self._conn = Connection(
            endpoint, server_public_key=server_public_key, client_secret_key=client_secret_key
        )
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        """The server endpoint."""
        return self._conn.endpoint

    # ------------------------------------------------------------ plumbing

    def _call(
        self, message: Any, timeout_s: float | None, check: Any = None, **encoding: Any
    ) -> Any:
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        if not self._lock.acquire(timeout=timeout_s):
            raise ServerTimeoutError(f"another call on this client held it for {timeout_s:.3f} s")
        try:
            if self.info is None:
                self._hello(deadline)
            if check is not None:
                check(self.info)  # local checks against what the server said it serves
            if hasattr(message, "timeout_ms"):
                message.timeout_ms = max(1, int((deadline - time.monotonic()) * 1000))
            max_bytes = self.info.max_message_bytes if self.info else None
            reply = self._exchange(message, deadline, max_bytes=max_bytes, **encoding)
            if isinstance(message, Heartbeat) and self.info is not None:
                self.info.policy_version, self.info.critic_version = (
                    reply.policy_version,
                    reply.critic_version,
                )
            return reply
        finally:
            self._lock.release()

    def _exchange(self, message: Any, deadline: float, **kwargs: Any) -> Any:
        try:
            reply = self._conn.request(message, max(0.0, deadline - time.monotonic()), **kwargs)
        except (ServerTimeoutError, VersionMismatchError):
            self.info, self.server_alive = None, False  # say hello again after a reconnect
            raise
        self.server_alive, self.last_contact = True, time.monotonic()
        return reply

    def _hello(self, deadline: float) -> ServerInfo:
        info = self._exchange(Hello(self._conn.next_id(), self.name), deadline)
        if info.protocol_version != PROTOCOL_VERSION:
            self.info = None
            raise VersionMismatchError(
                f"server {info.server} speaks protocol {info.protocol_version}, this client {PROTOCOL_VERSION}; "
                "upgrade the older side"
            )
        self.info = info
        return info

    # ------------------------------------------------------------ public API

    def connect(self, timeout_s: float | None = None) -> ServerInfo:
        """Say hello, return what the server hosts, and start heartbeats; raises on timeout."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        if not self._lock.acquire(timeout=timeout_s):
            raise ServerTimeoutError(f"another call on this client held it for {timeout_s:.3f} s")
        try:
            info = self._hello(deadline)
        finally:
            self._lock.release()
        interval = self._heartbeat_interval_s
        interval = info.heartbeat_interval_ms / 1000 if interval is None else interval
        if interval > 0 and self._heartbeat is None:
            self._heartbeat = threading.Thread(
                target=self._heartbeat_loop, args=(interval,), name="limbic-heartbeat", daemon=True
            )
            self._heartbeat.start()
        return info

    def act(
        self, obs: Observation, timeout_s: float | None = None, image_format: str | None = None
    ) -> ActReply:
        """An action chunk for ``obs`` (``reply.actions``: ``float32[chunk, A]``).

        With ``validate`` (default) the observation is checked against the served policy's
        spec before it is sent, raising :class:`~limbic.contracts.ContractError` locally.
        """

        def check(info: ServerInfo) -> None:
            if self.validate and info.policy is not None:
                spec = info.policy
                obs.validate(views=spec.views, state_dim=spec.state_dim, image_hw=spec.image_hw)

        request = ActRequest(self._conn.next_id(), obs)
        return self._call(
            request,
            timeout_s,
            check,
            image_format=image_format or self.image_format,
            jpeg_quality=self.jpeg_quality,
        )

    def critic(
        self,
        frames: Sequence[dict[str, np.ndarray]],
        instruction: str,
        goal: dict[str, np.ndarray] | None = None,
        phi0: float = 0.0,
        timeout_s: float | None = None,
        image_format: str | None = None,
    ) -> CriticReply:
        """Progress, done probability and value for each step of ``frames`` (two or more view maps)."""
        request = CriticRequest(self._conn.next_id(), instruction, list(frames), goal, phi0)
        return self._call(
            request,
            timeout_s,
            image_format=image_format or self.image_format,
            jpeg_quality=self.jpeg_quality,
        )

    def ping(self, timeout_s: float | None = None) -> Heartbeat:
        """One heartbeat round trip; the reply carries the live model versions."""
        return self._call(Heartbeat(self._conn.next_id(), time.time_ns()), timeout_s)

    def _heartbeat_loop(self, interval_s: float) -> None:
        while not self._closed.wait(interval_s / 2):
            if self.server_alive and time.monotonic() - self.last_contact < interval_s:
                continue  # recent replies already prove the server is alive
            if not self._lock.acquire(blocking=False):
                continue  # a request is in flight: it is a liveness probe of its own
            try:
                deadline = time.monotonic() + self.timeout_s
                if self.info is None:
                    self._hello(deadline)
                self._exchange(Heartbeat(self._conn.next_id(), time.time_ns()), deadline)
            except InferenceError as e:
                self.last_error = e  # _exchange marked the server dead; the next beat retries
            finally:
                self._lock.release()

    def close(self) -> None:
        """Stop heartbeats and close the socket."""
        self._closed.set()
        if self._heartbeat is not None:
            self._heartbeat.join(self.timeout_s + 1.0)
            self._heartbeat = None
        with self._lock:
            self._conn.close()

    def __enter__(self) -> InferenceClient:
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
