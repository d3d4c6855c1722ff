"""The learner's episode endpoint: a ROUTER socket that receives episodes and acknowledges them.

The **receiving thread** owns the socket. It answers ``learner_status`` and ``heartbeat`` at
once (so actors can tell a busy learner from a dead one), decodes and checks every
``episode`` (a bad one gets an error reply naming the field; the endpoint keeps serving),
acknowledges an episode already stored as ``duplicate``, and queues a new one for the
learner's storing thread. Once that thread has stored it durably, :meth:`EpisodeInbox.done`
hands the acknowledgement back, and the receiving thread sends it to every actor socket
that sent the episode meanwhile (a re-send of an episode still being stored just waits for
the same acknowledgement).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from limbic.runtime import auth
from limbic.runtime.protocol import (
    EpisodeAck,
    EpisodeUpload,
    ErrorCode,
    ErrorReply,
    Heartbeat,
    LearnerStatus,
    LearnerStatusRequest,
    Limits,
    ProtocolError,
    decode,
    encode_inline,
)

log = logging.getLogger(__name__)


@dataclass
class Delivery:
    """One received, checked episode and the sockets waiting for its acknowledgement."""

    episode: EpisodeUpload
    waiters: list[tuple[list[bytes], int]] = field(default_factory=list)
    received_ns: int = 0


class EpisodeInbox:
    """ROUTER endpoint for actors; episodes come out of :meth:`get`, acks go in through :meth:`done`.

    ``check(episode)`` raises :class:`ProtocolError` for an episode that does not fit the
    learner (views, sizes, bounds); ``stored(episode_id)`` says whether the store holds it;
    ``status()`` gives the :class:`LearnerStatus` fields.
    """

    def __init__(
        self,
        endpoint: str,
        check: Callable[[EpisodeUpload], None],
        stored: Callable[[str], bool],
        status: Callable[[], dict[str, Any]],
        *,
        max_message_bytes: int = 256 * 2**20,
        curve_keys: tuple[bytes, bytes] | None = None,
        authorized_clients_dir: str = "",
    ):
        self.check, self.stored, self.status = check, stored, status
        self.limits = Limits(max_message_bytes=max_message_bytes, max_array_len=2**16)
        self._ctx = zmq.Context()
        self._auth = None
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        try:
            if curve_keys:
                self._auth = auth.start_authenticator(self._ctx, authorized_clients_dir)
                auth.make_server(sock, *curve_keys)
            sock.bind(endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)
            self._ctx.destroy(linger=0)
            raise
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sock = sock
        self._queue: queue.Queue[Delivery] = queue.Queue()
        self._acks: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._pending: dict[str, Delivery] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counters = {"episodes": 0, "duplicates": 0, "errors": 0, "status": 0}
        self.error: BaseException | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> EpisodeInbox:
        """Start the receiving thread."""
        self._thread = threading.Thread(target=self._guard, name="limbic-inbox", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop receiving and close the socket; episodes not yet acknowledged will be re-sent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._auth is not None:
            self._auth.stop()
        self._ctx.destroy(linger=0)

    def get(self, timeout_s: float) -> Delivery | None:
        """The next new episode to store (None after ``timeout_s``)."""
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def done(self, episode_id: str, error: BaseException | None = None) -> None:
        """The storing thread finished ``episode_id``: acknowledge it (or report ``error``)."""
        self._acks.put((episode_id, error))

    def _guard(self) -> None:
        try:
            self._run()
        except BaseException as e:
            log.exception("learner inbox died")
            self.error = e
        finally:
            self._sock.close(linger=0)

    # ------------------------------------------------------------ receiving thread

    def _run(self) -> None:
        sock = self._sock
        while not self._stop.is_set():
            self._send_acks()
            if not sock.poll(20, zmq.POLLIN):
                continue
            frames = sock.recv_multipart(copy=False)
            envelope, payload = [f.bytes for f in frames[:-1]], frames[-1].buffer
            if len(envelope) not in (1, 2):
                continue  # cannot be routed back
            try:
                reply = self._handle(envelope, payload)
            except Exception as e:  # a failure on one message never stops the endpoint
                log.exception("learner inbox failed on a message")
                reply = ErrorReply(
                    None,
                    ErrorCode.INTERNAL,
                    f"{type(e).__name__}: {e}",
                    None,
                    traceback.format_exc(limit=8),
                )
            if reply is not None:
                self._reply(envelope, reply)

    def _reply(self, envelope: list[bytes], message: Any) -> None:
        if isinstance(message, ErrorReply):
            self.counters["errors"] += 1
        try:
            self._sock.send_multipart([*envelope, encode_inline(message)], zmq.NOBLOCK)
        except zmq.ZMQError as e:  # the actor went away; it re-sends when back
            log.info("reply to a gone actor dropped: %s", e)

    def _status(self, request_id: int) -> LearnerStatus:
        return LearnerStatus(request_id, **self.status())

    def _handle(self, envelope: list[bytes], payload: Any) -> Any:
        try:
            message = decode(
                payload, self.limits, accept=("episode", "learner_status", "heartbeat")
            )
        except ProtocolError as e:
            return ErrorReply.of(e.request_id, e)
        if isinstance(message, LearnerStatusRequest):
            self.counters["status"] += 1
            return self._status(message.id)
        if isinstance(message, Heartbeat):
            return Heartbeat(message.id, time.time_ns())
        episode: EpisodeUpload = message
        try:
            self.check(episode)
        except ProtocolError as e:
            log.warning("refused episode %s: %s", episode.episode_id, e)
            return ErrorReply.of(episode.id, e)
        if self.stored(episode.episode_id):
            self.counters["duplicates"] += 1
            return self._ack(episode.id, episode.episode_id, "duplicate")
        pending = self._pending.get(episode.episode_id)
        if pending is not None:  # a re-send while it is being stored: answer both when done
            pending.waiters.append((envelope, episode.id))
            return None
        delivery = Delivery(episode, [(envelope, episode.id)], time.time_ns())
        self._pending[episode.episode_id] = delivery
        self._queue.put(delivery)
        return None

    def _ack(self, request_id: int, episode_id: str, status: str) -> EpisodeAck:
        s = self.status()
        return EpisodeAck(request_id, episode_id, status, s["episodes"], s["backlog_updates"])

    def _send_acks(self) -> None:
        while True:
            try:
                episode_id, error = self._acks.get_nowait()
            except queue.Empty:
                return
            delivery = self._pending.pop(episode_id, None)
            if delivery is None:
                continue
            for envelope, request_id in delivery.waiters:
                if error is None:
                    self.counters["episodes"] += 1
                    self._reply(envelope, self._ack(request_id, episode_id, "stored"))
                else:
                    text = "".join(traceback.format_exception(error, limit=8))
                    code = error.code if isinstance(error, ProtocolError) else ErrorCode.INTERNAL
                    field_name = error.field if isinstance(error, ProtocolError) else None
                    self._reply(
                        envelope,
                        ErrorReply(
                            request_id, code, f"{type(error).__name__}: {error}", field_name, text
                        ),
                    )
