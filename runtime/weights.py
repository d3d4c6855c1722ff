"""Hot weight swap: a learner publishes weights, the server makes them live between batches.

The learner's :class:`WeightPublisher` sends a ``weights`` message (every state-dict tensor
as a raw array, never pickle) with a version above the live one to the server's weights
endpoint, and waits for ``weights_reply``: from then on every reply of the server carries
that version or a newer one. The server's :class:`WeightReceiver` checks the update against
the served model (keys, shapes, dtypes, finiteness), loads it into a spare copy off the
serving path, and hands it to the batch thread, which swaps it in between two batches.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import zmq

from limbic.runtime import auth
from limbic.runtime.client import Connection
from limbic.runtime.protocol import (
    ErrorCode,
    ErrorReply,
    Heartbeat,
    Limits,
    ProtocolError,
    WeightsAck,
    WeightsUpdate,
    decode,
    encode,
)

log = logging.getLogger(__name__)


def to_numpy_tensors(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """numpy arrays of a torch state dict (or of arrays); bfloat16 goes as float32."""
    out = {}
    for name, value in state_dict.items():
        if hasattr(value, "detach"):  # a torch tensor; imported lazily so numpy users need no torch
            value = value.detach().cpu()
            if str(value.dtype) == "torch.bfloat16":
                value = value.float()
            value = value.numpy()
        out[name] = np.asarray(value)
    return out


class WeightPublisher:
    """Learner side: publishes versioned weights to a server's weights endpoint."""

    def __init__(
        self,
        endpoint: str = "tcp://127.0.0.1:5556",
        *,
        timeout_s: float = 30.0,
        server_public_key: bytes | str | os.PathLike | None = None,
        client_secret_key: str | os.PathLike | None = None,
    ):
        self.timeout_s = timeout_s
        self._conn = Connection(
            endpoint, server_public_key=server_public_key, client_secret_key=client_secret_key
        )

    def publish(
        self,
        target: str,
        version: int,
        state_dict: Mapping[str, Any],
        timeout_s: float | None = None,
    ) -> WeightsAck:
        """Send ``state_dict`` as ``target`` (``policy`` or ``critic``) ``version``; return once live.

        Raises :class:`~limbic.runtime.client.ServerError` (``stale_version``, ``bad_field``
        naming the tensor, ``not_served``, ``malformed`` for an update above the server's
        ``server.max_weights_bytes``) or :class:`~limbic.runtime.client.ServerTimeoutError` (also
        what one tensor above that limit gets: ZeroMQ drops the connection).
        """
        update = WeightsUpdate(
            self._conn.next_id(), target, int(version), to_numpy_tensors(state_dict)
        )
        return self._conn.request(update, self.timeout_s if timeout_s is None else timeout_s)

    def ping(self, timeout_s: float | None = None) -> Heartbeat:
        """A heartbeat round trip; the reply carries the server's live versions."""
        beat = Heartbeat(self._conn.next_id(), time.time_ns())
        return self._conn.request(beat, self.timeout_s if timeout_s is None else timeout_s)

    def close(self) -> None:
        """Close the socket."""
        self._conn.close()

    def __enter__(self) -> WeightPublisher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class WeightReceiver:
    """Server side: owns the weights ROUTER socket; :meth:`run` is the weight thread's loop."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        runners: dict[str, Any],
        stage: Callable[[str, Any, int], threading.Event],
        max_message_bytes: int,
        curve_keys: tuple[bytes, bytes] | None,
        stop: threading.Event,
    ):
        self.runners, self._stage, self._stop = runners, stage, stop
        # A state dict has one map entry per tensor: allow many entries, bounded by the byte size.
        self.limits = Limits(
            max_message_bytes=max_message_bytes,
            max_map_len=2**20,
            max_array_len=64,
            max_frames=2**20,
        )
        self._staged_versions: dict[str, int] = {}
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        if curve_keys:
            auth.make_server(sock, *curve_keys)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sock = sock

    def run(self) -> None:
        """Serve weight updates until the stop event is set."""
        try:
            while not self._stop.is_set():
                if not self._sock.poll(100, zmq.POLLIN):
                    continue
                frames = self._sock.recv_multipart(copy=False)
                # [identity, header, *data] from a DEALER, [identity, b"", header, *data] from a REQ
                split = 2 if len(frames) > 2 and not len(frames[1]) else 1
                envelope = [f.bytes for f in frames[:split]]
                reply = self._handle([f.buffer for f in frames[split:]])
                if reply is None:
                    return  # stopping while waiting for the swap
                try:
                    self._sock.send_multipart([*envelope, *encode(reply)], zmq.NOBLOCK)
                except zmq.ZMQError as e:
                    log.warning("weights reply undeliverable: %s", e)
        finally:
            self._sock.close(linger=0)

    def _handle(self, frames: list[memoryview]) -> Any:
        request_id = None
        try:
            message = decode(frames, self.limits, accept=("weights", "heartbeat"))
            request_id = message.id
            if isinstance(message, Heartbeat):
                return Heartbeat(message.id, 0, *(self._version(k) for k in ("policy", "critic")))
            return self._update(message)
        except ProtocolError as e:
            return ErrorReply.of(e.request_id if e.request_id is not None else request_id, e)
        except Exception as e:  # a failure while loading fails this update, never the server
            log.exception("weight update failed")
            text = traceback.format_exc(limit=8)
            return ErrorReply(
                request_id, ErrorCode.INTERNAL, f"{type(e).__name__}: {e}", None, text
            )

    def _version(self, target: str) -> int:
        runner = self.runners.get(target)
        return -1 if runner is None else runner.version

    def _update(self, update: WeightsUpdate) -> WeightsAck | None:
        runner = self.runners.get(update.target)
        if runner is None:
            raise ProtocolError(
                ErrorCode.NOT_SERVED, "target", f"this server hosts no {update.target}", update.id
            )
        live = max(runner.version, self._staged_versions.get(update.target, -1))
        if update.version <= live:
            raise ProtocolError(
                ErrorCode.STALE_VERSION,
                "version",
                f"{update.target} v{update.version} is not above the live v{live}",
                update.id,
            )
        prepared = runner.prepare(update.tensors)
        self._staged_versions[update.target] = update.version
        swapped = self._stage(update.target, prepared, update.version)
        while not swapped.wait(0.1):
            if self._stop.is_set():
                return None
        return WeightsAck(update.id, update.target, update.version)
