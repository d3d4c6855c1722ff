"""The actor's outbox: finished episodes travel to the learner and stay until it acknowledges them.

:class:`Outbox` holds encoded ``episode`` messages in order: the first ``memory_episodes``
in memory, the rest spilled to files in a spool folder (written whole, then renamed, so a
crash never leaves half a file). A spool folder left by an earlier run is read back, so
episodes survive an actor restart too. Nothing is dropped: once ``max_episodes`` are
waiting, :attr:`Outbox.full` tells the actor loop to wait before starting another episode.

:class:`EpisodeSender` is the thread that empties it over one DEALER socket: it sends the
oldest episode, waits for the learner's ``episode_ack`` (sent once the episode is on disk),
and meanwhile asks for ``learner_status`` so it knows the learner is alive and how far its
training lags. When the learner stops answering it resets the socket and, once the learner
answers again, re-sends everything unacknowledged. The learner stores each ``episode_id``
once, so a re-sent episode whose first acknowledgement was lost is not stored twice.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import zmq

from limbic.launch.config import require
from limbic.runtime.client import Connection
from limbic.runtime.codec import ErrorCode
from limbic.runtime.protocol import (
    EpisodeAck,
    ErrorReply,
    LearnerStatus,
    LearnerStatusRequest,
    Limits,
    ProtocolError,
    decode,
    encode_inline,
)

log = logging.getLogger(__name__)

SPOOL_SUFFIX = ".episode"
REJECTED = "rejected"
"""Spool subfolder for episodes the learner refused as malformed (kept for inspection)."""

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass
class OutboxConfig:
    """How many unacknowledged episodes an actor keeps, where, and how it re-sends them."""

    spool_dir: str = ""
    """Folder for spilled episodes; empty: ``<actor out_dir>/<actor_id>/outbox``."""
    memory_episodes: int = 0
    """Unacknowledged episodes kept in memory only; later ones go to the spool folder. At 0
    (the default) every finished episode is on disk before it is sent, so it survives an
    actor crash too."""
    max_episodes: int = 500
    """Unacknowledged episodes (memory and disk) before the actor waits for the learner."""
    ack_timeout_s: float = 300.0
    """Re-send an episode whose acknowledgement has not come this long, the learner alive."""
    dead_after_s: float = 3.0
    """The learner counts as gone after this long without any reply."""
    status_interval_s: float = 0.5
    """How often the sender asks for the learner's status."""
    image_format: str = "raw"
    """Frames in uploaded episodes: ``raw`` (lossless) or ``jpeg`` (20-40x smaller, lossy)."""
    jpeg_quality: int = 90
    """JPEG quality when ``image_format`` is ``jpeg``."""

    def __post_init__(self) -> None:
        require(self.memory_episodes >= 0, "outbox.memory_episodes", "must be >= 0")
        require(self.max_episodes >= 1, "outbox.max_episodes", "must be >= 1")
        require(self.ack_timeout_s > 0, "outbox.ack_timeout_s", "must be > 0")
        require(
            self.dead_after_s > self.status_interval_s > 0,
            "outbox.dead_after_s",
            "must exceed status_interval_s, both > 0",
        )
        require(
            self.image_format in ("raw", "jpeg"),
            "outbox.image_format",
            f"expected raw or jpeg, got {self.image_format!r}",
        )


class Outbox:
    """Encoded episodes awaiting acknowledgement, oldest first; thread-safe."""

    def __init__(self, spool_dir: str | Path | None, memory_episodes: int, max_episodes: int):
        self.spool = Path(spool_dir) if spool_dir else None
        self.memory_episodes, self.max_episodes = memory_episodes, max_episodes
        # episode id -> (its place in the order of put(), payload in memory or its spool file)
        self._items: OrderedDict[str, tuple[int, bytes | Path]] = OrderedDict()
        self._cond = threading.Condition()
        self._counter = 0
        self.acked = 0
        self.rejected = 0
        if self.spool is not None:
            self.spool.mkdir(parents=True, exist_ok=True)
            for path in sorted(self.spool.glob(f"*{SPOOL_SUFFIX}")):
                counter, _, episode_id = path.stem.partition(".")
                self._items[episode_id] = (int(counter), path)
                self._counter = max(self._counter, int(counter) + 1)
            for stale in self.spool.glob("*.tmp"):
                stale.unlink()  # a spill cut short by a crash; its episode is still in memory order

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def full(self) -> bool:
        """True once ``max_episodes`` wait: the actor should not start another episode."""
        return len(self) >= self.max_episodes

    @property
    def in_memory(self) -> int:
        """Episodes held in memory (the rest are on disk)."""
        with self._cond:
            return sum(isinstance(v, bytes) for _, v in self._items.values())

    def put(self, episode_id: str, payload: bytes) -> None:
        """Queue an encoded episode; spills it to disk when memory holds enough already."""
        with self._cond:
            if episode_id in self._items:
                raise ValueError(f"episode {episode_id!r} is already in the outbox")
            in_memory = sum(isinstance(v, bytes) for _, v in self._items.values())
            counter = self._counter
            self._counter += 1
            if in_memory >= self.memory_episodes and self.spool is not None:
                self._items[episode_id] = (counter, self._spill(counter, episode_id, payload))
            else:
                self._items[episode_id] = (counter, payload)
            self._cond.notify_all()

    def _spill(self, counter: int, episode_id: str, payload: bytes) -> Path:
        assert self.spool is not None
        path = self.spool / f"{counter:012d}.{_SAFE.sub('_', episode_id)}{SPOOL_SUFFIX}"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def oldest(self, timeout_s: float) -> tuple[str, bytes] | None:
        """The oldest waiting episode ``(id, payload)``, waiting up to ``timeout_s`` for one."""
        with self._cond:
            if not self._items and not self._cond.wait_for(lambda: bool(self._items), timeout_s):
                return None
            episode_id, (_, item) = next(iter(self._items.items()))
        return episode_id, item if isinstance(item, bytes) else item.read_bytes()

    def ids(self) -> list[str]:
        """Ids of the waiting episodes, oldest first."""
        with self._cond:
            return list(self._items)

    def ack(self, episode_id: str) -> None:
        """The learner holds ``episode_id``: forget it (and delete its spool file)."""
        with self._cond:
            _, item = self._items.pop(episode_id, (0, None))
            if item is None:
                return
            self.acked += 1
            self._cond.notify_all()
        if isinstance(item, Path):
            item.unlink(missing_ok=True)

    def reject(self, episode_id: str, reason: str) -> None:
        """The learner refused ``episode_id`` as malformed: keep it aside, never re-send it."""
        with self._cond:
            _, item = self._items.pop(episode_id, (0, None))
            self.rejected += 1
            self._cond.notify_all()
        log.error("learner refused episode %s: %s", episode_id, reason)
        if self.spool is None or item is None:
            return
        folder = self.spool / REJECTED
        folder.mkdir(exist_ok=True)
        target = folder / f"{_SAFE.sub('_', episode_id)}{SPOOL_SUFFIX}"
        if isinstance(item, Path):
            os.replace(item, target)
        else:
            target.write_bytes(item)
        target.with_suffix(".reason.txt").write_text(reason + "\n")

    def spill_all(self) -> int:
        """Write every in-memory episode to the spool folder (at shutdown); returns how many."""
        if self.spool is None:
            return 0
        with self._cond:
            spilled = 0
            for episode_id, (counter, item) in list(self._items.items()):
                if isinstance(item, bytes):
                    self._items[episode_id] = (counter, self._spill(counter, episode_id, item))
                    spilled += 1
            return spilled

    def wait_empty(self, timeout_s: float) -> bool:
        """Block until every episode is acknowledged (or ``timeout_s``); True when empty."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._items, timeout_s)


def peek_request_id(payload: bytes) -> int | None:
    """The ``id`` of an encoded message without unpacking its (large) body."""
    unpacker = msgpack.Unpacker(raw=False, max_bin_len=0, max_str_len=4096)
    unpacker.feed(payload[:512])
    try:
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key == "id":
                value = unpacker.unpack()
                return value if isinstance(value, int) and not isinstance(value, bool) else None
            unpacker.skip()
    except (ValueError, msgpack.OutOfData):
        return None
    return None


class EpisodeSender:
    """Background thread: sends the outbox's episodes to the learner, oldest first, until acked."""

    def __init__(
        self,
        outbox: Outbox,
        endpoint: str,
        actor_id: str,
        cfg: OutboxConfig,
        *,
        server_public_key: bytes | str | os.PathLike | None = None,
        client_secret_key: str | os.PathLike | None = None,
    ):
        self.outbox, self.endpoint, self.actor_id, self.cfg = outbox, endpoint, actor_id, cfg
        # Replies (acknowledgements, status) are small; episodes only go out.
        self._conn = Connection(
            endpoint,
            server_public_key=server_public_key,
            client_secret_key=client_secret_key,
            max_reply_bytes=2**20,
        )
        self._limits = Limits(max_message_bytes=2**20)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.status: LearnerStatus | None = None
        """The learner's last status (from a status reply or an acknowledgement)."""
        self.last_contact = 0.0
        """``time.monotonic()`` of the learner's last reply (0: never)."""
        self.resends = 0
        self.error: BaseException | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> EpisodeSender:
        """Start the sending thread."""
        self._thread = threading.Thread(target=self._guard, name="limbic-outbox", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop sending (episodes not yet acknowledged stay in the outbox)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self._reset()

    @property
    def learner_alive(self) -> bool:
        """True while the learner has answered within ``dead_after_s``."""
        return (
            self.last_contact > 0 and time.monotonic() - self.last_contact < self.cfg.dead_after_s
        )

    def _guard(self) -> None:
        try:
            self._run()
        except BaseException as e:  # a bug here must not pass silently: the actor checks .error
            log.exception("episode sender died")
            self.error = e

    # ------------------------------------------------------------ socket

    def _reset(self) -> None:
        self._conn.reset()

    def _send(self, payload: bytes) -> bool:
        try:
            self._conn.socket().send(payload, zmq.NOBLOCK)
            return True
        except zmq.Again:  # nothing connected and the queue is full: the learner is away
            self._reset()
            return False

    def _ask_status(self) -> None:
        self._send(encode_inline(LearnerStatusRequest(self._conn.next_id(), self.actor_id)))

    def _receive(self, timeout_s: float) -> Any:
        """One reply within ``timeout_s`` (None if none came); updates liveness and status."""
        sock = self._conn.socket()
        if not sock.poll(max(1, int(timeout_s * 1000)), zmq.POLLIN):
            return None
        frames = sock.recv_multipart()
        try:
            reply = decode(
                frames[-1], self._limits, accept=("episode_ack", "learner_status_reply", "error")
            )
        except ProtocolError as e:
            log.warning("unreadable reply from learner %s: %s", self.endpoint, e)
            return None
        self.last_contact = time.monotonic()
        if isinstance(reply, LearnerStatus):
            self.status = reply
        elif isinstance(reply, EpisodeAck) and self.status is not None:
            self.status.episodes = reply.episodes
            self.status.backlog_updates = reply.backlog_updates
        return reply

    # ------------------------------------------------------------ loop

    def _run(self) -> None:
        cfg = self.cfg
        next_status = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_status:
                self._ask_status()
                next_status = now + cfg.status_interval_s
            if not self.learner_alive:
                self._receive(cfg.status_interval_s)  # wait for the learner to answer at all
                if not self.learner_alive and self.last_contact:
                    self._reset()  # drop whatever is queued to the gone learner
                continue
            item = self.outbox.oldest(timeout_s=0.0)
            if item is None:
                self._receive(min(cfg.status_interval_s, max(0.0, next_status - time.monotonic())))
                continue
            self._deliver(*item)

    def _deliver(self, episode_id: str, payload: bytes) -> None:
        """Send one episode and wait for its acknowledgement, the learner's death, or a timeout."""
        cfg = self.cfg
        request_id = peek_request_id(payload)
        if not self._send(payload):
            return
        sent = time.monotonic()
        next_status = sent + cfg.status_interval_s
        while not self._stop.is_set():
            reply = self._receive(
                max(0.01, min(next_status, sent + cfg.ack_timeout_s) - time.monotonic())
            )
            if isinstance(reply, EpisodeAck) and reply.episode_id == episode_id:
                self.outbox.ack(episode_id)
                return
            if isinstance(reply, ErrorReply) and reply.id in (request_id, None):
                if reply.code in (ErrorCode.BAD_FIELD, ErrorCode.MALFORMED, ErrorCode.UNKNOWN_TYPE):
                    self.outbox.reject(episode_id, f"[{reply.code}] {reply.field}: {reply.message}")
                else:
                    log.warning(
                        "learner failed to store %s (%s); will re-send", episode_id, reply.message
                    )
                    self._stop.wait(cfg.status_interval_s)
                return
            now = time.monotonic()
            if now >= next_status:
                self._ask_status()
                next_status = now + cfg.status_interval_s
            if not self.learner_alive or now - sent > cfg.ack_timeout_s:
                log.warning(
                    "no acknowledgement of %s from %s; re-sending when the learner answers",
                    episode_id,
                    self.endpoint,
                )
                self.resends += 1
                self._reset()
                return
