"""The wire protocol between actor loops, the inference server and the learner.

One module that both sides import; it needs only numpy, msgpack and ``limbic.contracts``
(JPEG frames lazily import OpenCV through :mod:`limbic.runtime.jpeg`). ``docs/protocol.md``
describes the same bytes for clients written without limbic; keep the two in step.

Every message is one or more ZeroMQ frames: a msgpack map with string keys ``v`` (protocol
version), ``type`` and ``id`` (chosen by the requester, echoed in the reply), plus the fields
of its dataclass below; then one data frame per array or JPEG whose bytes travel out of band
(images and weights: sent and received without a copy through msgpack), which the map refers
to by number. Each field names the :class:`~limbic.runtime.codec.Codec` that packs it and
checks it on the way in (:mod:`limbic.runtime.codec`: arrays, frames, checked scalars), so
the schema is the dataclasses themselves. Unpacking is bounded and strictly typed: no ext
types, string map keys only, never pickle. Every decoding failure is a
:class:`ProtocolError` naming the field, the value and the expected form.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack
import numpy as np

from limbic.contracts import SCHEMA_VERSION, ContractError, Observation
from limbic.runtime.codec import (
    COUNT,
    DTYPES,
    FRAME_MIN_BYTES,
    FRAMES,
    ID,
    IMAGE_FORMATS,
    IMAGE_HW,
    MAX_ID,
    MICROS,
    NAME,
    NAMES,
    POSITIVE,
    TENSORS,
    TEXT,
    UNIT,
    VERSION,
    VIEWS,
    Codec,
    Encoding,
    ErrorCode,
    FrameReader,
    FrameWriter,
    Limits,
    ProtocolError,
    array_of,
    bad,
    check_int,
    check_keys,
    check_str,
    check_type,
    nested,
    pack_array,
    pack_fields,
    pack_image,
    pack_views,
    show,
    unpack_array,
    unpack_fields,
    unpack_image,
    unpack_views,
    wire,
)

__all__ = [
    "DTYPES",
    "FRAME_MIN_BYTES",
    "IMAGE_FORMATS",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "ActReply",
    "ActRequest",
    "CriticReply",
    "CriticRequest",
    "CriticSpec",
    "Encoding",
    "EpisodeAck",
    "EpisodeUpload",
    "ErrorCode",
    "ErrorReply",
    "Heartbeat",
    "Hello",
    "LearnerStatus",
    "LearnerStatusRequest",
    "Limits",
    "Message",
    "PolicySpec",
    "ProtocolError",
    "ServerInfo",
    "Timings",
    "WeightsAck",
    "WeightsUpdate",
    "decode",
    "encode",
    "encode_timed",
    "pack_array",
    "pack_image",
    "peek_id",
    "unpack_array",
    "unpack_image",
    "unpack_map",
]

PROTOCOL_VERSION = 2
"""Version of this wire format; a message carrying another ``v`` gets ``version_mismatch``.

1: one frame, every byte inside the msgpack map. 2: large array and JPEG bytes in data frames.
"""

# ---------------------------------------------------------------- model metadata


@dataclass(frozen=True)
class PolicySpec:
    """What a served policy consumes and produces; sent to clients in :class:`ServerInfo`."""

    views: tuple[str, ...] = wire(NAMES)
    image_hw: tuple[int, int] = wire(IMAGE_HW)
    state_dim: int = wire(COUNT)
    action_dim: int = wire(POSITIVE)
    chunk_len: int = wire(POSITIVE)
    lang_dim: int = wire(POSITIVE)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for the wire and for ONNX metadata."""
        return pack_fields(self)

    @classmethod
    def from_dict(cls, d: Any, path: str = "policy") -> PolicySpec:
        """Inverse of :meth:`to_dict`, with errors naming the field."""
        return unpack_fields(cls, d, path, FrameReader(), strict=False)


@dataclass(frozen=True)
class CriticSpec:
    """What a served progress critic consumes; sent to clients in :class:`ServerInfo`."""

    views: tuple[str, ...] = wire(NAMES)
    image_hw: tuple[int, int] = wire(IMAGE_HW)
    lang_dim: int = wire(POSITIVE)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for the wire and for ONNX metadata."""
        return pack_fields(self)

    @classmethod
    def from_dict(cls, d: Any, path: str = "critic") -> CriticSpec:
        """Inverse of :meth:`to_dict`, with errors naming the field."""
        return unpack_fields(cls, d, path, FrameReader(), strict=False)


@dataclass
class Timings:
    """Where a request's time went inside the server, in microseconds.

    ``queue_us`` from decoded to picked up by a batch (a request that arrives while an idle
    server runs a lone request's model call waits in the socket first, not counted);
    ``decode_us`` unpacking, validating and JPEG-decoding it; ``assemble_us`` stacking the
    batch; ``infer_us`` the model call for the whole batch; ``encode_us`` packing this reply;
    ``batch_size`` requests in the batch.
    """

    queue_us: float = wire(MICROS, 0.0)
    decode_us: float = wire(MICROS, 0.0)
    assemble_us: float = wire(MICROS, 0.0)
    infer_us: float = wire(MICROS, 0.0)
    encode_us: float = wire(MICROS, 0.0)
    batch_size: int = wire(COUNT, 0)


# ---------------------------------------------------------------- messages


def _observation_codec() -> Codec:
    keys = frozenset(
        {
            "timestamp_ns",
            "images",
            "frame_timestamps_ns",
            "state",
            "instruction",
            "episode_id",
            "step",
        }
    )

    required = tuple(sorted(keys - {"frame_timestamps_ns"}))

    def pack(obs: Observation, out: FrameWriter) -> dict[str, Any]:
        return {
            "timestamp_ns": int(obs.timestamp_ns),
            "images": pack_views(obs.images, out),
            "frame_timestamps_ns": {k: int(v) for k, v in obs.frame_timestamps_ns.items()},
            "state": pack_array(np.asarray(obs.state), out),
            "instruction": obs.instruction,
            "episode_id": obs.episode_id,
            "step": int(obs.step),
        }

    def unpack(d: Any, path: str, frames: FrameReader) -> Observation:
        if not isinstance(d, dict):
            raise bad(path, f"expected an observation map, got {show(d)}")
        check_keys(d, path, keys)
        for key in required:
            if d.get(key) is None:
                raise bad(f"{path}.{key}", "missing")
        stamps = d.get("frame_timestamps_ns") or {}
        obs = Observation(
            timestamp_ns=check_int(d["timestamp_ns"], f"{path}.timestamp_ns"),
            images=unpack_views(d["images"], f"{path}.images", frames),
            state=unpack_array(d["state"], f"{path}.state", dtype="float32", ndim=1, frames=frames),
            instruction=check_str(d["instruction"], f"{path}.instruction"),
            episode_id=check_str(d["episode_id"], f"{path}.episode_id"),
            step=check_int(d["step"], f"{path}.step"),
            frame_timestamps_ns=check_type(stamps, f"{path}.frame_timestamps_ns", dict, "a map"),
        )
        try:
            return obs.validate()
        except ContractError as e:
            raise bad(f"{path}.{e.field}", str(e).split(": ", 1)[1]) from None

    return Codec(pack, unpack)


OBSERVATION = _observation_codec()


class Message:
    """Base of every wire message: ``TYPE`` names it; requests (``STRICT``) reject unknown keys."""

    TYPE: ClassVar[str] = ""
    STRICT: ClassVar[bool] = False

    def to_wire(self, out: FrameWriter | None = None) -> dict[str, Any]:
        """The fields as a plain map (without ``v`` and ``type``); large bytes go to ``out``'s frames."""
        return pack_fields(self, out or FrameWriter())

    @classmethod
    def from_wire(cls, d: dict[str, Any], frames: FrameReader) -> Any:
        """Parse and check a map (with ``v`` and ``type``); raise naming the bad field."""
        return unpack_fields(cls, d, "", frames, strict=cls.STRICT, extra=frozenset({"v", "type"}))


@dataclass
class Hello(Message):
    """Client -> server on connect: asks for :class:`ServerInfo`."""

    TYPE: ClassVar[str] = "hello"
    STRICT: ClassVar[bool] = True
    id: int = wire(ID)
    client: str = wire(NAME, "limbic-client")


@dataclass
class ServerInfo(Message):
    """Server -> client reply to :class:`Hello`: what is served and the limits in force."""

    TYPE: ClassVar[str] = "hello_reply"
    id: int = wire(ID)
    server: str = wire(NAME)
    max_message_bytes: int = wire(ID)
    heartbeat_interval_ms: int = wire(ID)
    client_timeout_ms: int = wire(ID)
    policy: PolicySpec | None = wire(nested(PolicySpec), None)
    critic: CriticSpec | None = wire(nested(CriticSpec), None)
    policy_version: int = wire(VERSION, -1)
    critic_version: int = wire(VERSION, -1)
    backend: str = wire(NAME, "torch")
    protocol_version: int = wire(ID, PROTOCOL_VERSION)
    schema_version: int = wire(ID, SCHEMA_VERSION)
    image_formats: tuple[str, ...] = wire(NAMES, IMAGE_FORMATS)


@dataclass
class Heartbeat(Message):
    """Liveness probe, both ways; the server's carries the live model versions."""

    TYPE: ClassVar[str] = "heartbeat"
    STRICT: ClassVar[bool] = True
    id: int = wire(ID)
    time_ns: int = wire(ID, 0)
    policy_version: int = wire(VERSION, -1)
    critic_version: int = wire(VERSION, -1)


@dataclass
class ActRequest(Message):
    """Client -> server: an observation; the reply is an :class:`ActReply` or an error.

    ``timeout_ms`` is the client's remaining budget: a request still queued past it is
    answered with ``deadline_exceeded`` instead of being run.
    """

    TYPE: ClassVar[str] = "act"
    STRICT: ClassVar[bool] = True
    id: int = wire(ID)
    obs: Observation = wire(OBSERVATION)
    timeout_ms: int | None = wire(ID, None)


@dataclass
class ActReply(Message):
    """Server -> client: an action chunk ``float32[chunk, A]`` and who computed it."""

    TYPE: ClassVar[str] = "act_reply"
    id: int = wire(ID)
    actions: np.ndarray = wire(array_of("float32", 2))
    policy_version: int = wire(VERSION)
    timings: Timings = wire(nested(Timings))


@dataclass
class CriticRequest(Message):
    """Client -> server: judge progress along ``frames`` (two or more, each a view map).

    Entry ``i`` of the reply describes ``frames[i + 1]``: progress from ``frames[i]``, the done
    probability, and the fused value. ``phi0`` is the value of ``frames[0]`` (0 at an episode's
    start); ``goal`` (optional) is a frame of the finished task for the backward estimate.
    """

    TYPE: ClassVar[str] = "critic"
    STRICT: ClassVar[bool] = True
    id: int = wire(ID)
    instruction: str = wire(NAME)
    frames: list[dict[str, np.ndarray]] = wire(FRAMES)
    goal: dict[str, np.ndarray] | None = wire(VIEWS, None)
    phi0: float = wire(UNIT, 0.0)
    timeout_ms: int | None = wire(ID, None)

    def check(self, path: str) -> None:
        """A window needs two frames at least."""
        if len(self.frames) < 2:
            raise bad("frames", f"expected at least 2 frames, got {len(self.frames)}")


@dataclass
class CriticReply(Message):
    """Server -> client: per step progress, done probability and value, ``float32[N - 1]`` each."""

    TYPE: ClassVar[str] = "critic_reply"
    id: int = wire(ID)
    progress: np.ndarray = wire(array_of("float32", 1))
    done_prob: np.ndarray = wire(array_of("float32", 1))
    value: np.ndarray = wire(array_of("float32", 1))
    critic_version: int = wire(VERSION)
    timings: Timings = wire(nested(Timings))


@dataclass
class ErrorReply(Message):
    """Server -> client: the request failed; ``field`` names the bad field when there is one.

    ``id`` is ``None`` when the request could not be parsed far enough to read its id.
    """

    TYPE: ClassVar[str] = "error"
    id: int | None = wire(ID, optional=True)
    code: ErrorCode = wire(
        Codec(lambda v, out: ErrorCode(v).value, lambda v, p, rx: _error_code(v, p))
    )
    message: str = wire(TEXT)
    field: str | None = wire(TEXT, None)
    traceback: str = wire(TEXT, "")

    @classmethod
    def of(cls, request_id: int | None, error: ProtocolError) -> ErrorReply:
        """The reply for a :class:`ProtocolError`."""
        return cls(request_id, error.code, str(error), error.field)


def _error_code(value: Any, path: str) -> ErrorCode:
    try:
        return ErrorCode(check_str(value, path))
    except ValueError:
        raise bad(path, f"unknown error code {value!r}") from None


@dataclass
class WeightsUpdate(Message):
    """Learner -> server (weights endpoint): new weights for ``target`` at ``version``.

    ``tensors`` maps every state-dict key of the served model to an array of the same shape;
    the version must be above the live one. The reply is :class:`WeightsAck` once live.
    """

    TYPE: ClassVar[str] = "weights"
    STRICT: ClassVar[bool] = True
    id: int = wire(ID)
    target: str = wire(NAME)
    version: int = wire(ID)
    tensors: dict[str, np.ndarray] = wire(TENSORS)

    def check(self, path: str) -> None:
        """Only the policy and the critic take weights."""
        if self.target not in ("policy", "critic"):
            raise bad("target", f"expected 'policy' or 'critic', got {self.target!r}")


@dataclass
class WeightsAck(Message):
    """Server -> learner: ``version`` of ``target`` is live; every later reply uses it or newer."""

    TYPE: ClassVar[str] = "weights_reply"
    id: int = wire(ID)
    target: str = wire(NAME)
    version: int = wire(ID)


# ---------------------------------------------------------------- learner endpoint


def _episode_frames_codec() -> Codec:
    """A view's frames of one episode: ``uint8[T + 1, H, W, 3]`` raw (one data frame), or one
    JPEG per frame; the bytes travel as data frames when large (as images do)."""

    def pack(frames: np.ndarray, out: FrameWriter) -> dict[str, Any]:
        enc = out.encoding
        if enc.image_format == "jpeg":
            from limbic.runtime import jpeg

            items = []
            for f in frames:
                data = jpeg.encode(f, enc.jpeg_quality)
                items.append(out.binary(data, len(data)))
            return {"format": "jpeg", "frames": items}
        return {"format": "raw", **pack_array(frames, out)}

    def unpack(d: Any, path: str, reader: FrameReader) -> np.ndarray:
        if not isinstance(d, dict):
            raise bad(path, f"expected a frames map with a 'format' key, got {show(d)}")
        limits = reader.limits
        fmt = d.get("format")
        if fmt == "raw":
            frames = unpack_array(
                {k: v for k, v in d.items() if k != "format"},
                path,
                dtype="uint8",
                ndim=4,
                frames=reader,
            )
        elif fmt == "jpeg":
            check_keys(d, path, {"format", "frames"})
            items = check_type(d.get("frames"), f"{path}.frames", list, "an array of JPEG frames")
            if not items:
                raise bad(f"{path}.frames", "expected at least one frame")
            images = []
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    raise bad(f"{path}.frames[{i}]", f"expected a map, got {show(item)}")
                images.append(unpack_image({"format": "jpeg", **item}, f"{path}[{i}]", reader))
            frames = np.stack(images)
        else:
            raise bad(f"{path}.format", f"expected one of {list(IMAGE_FORMATS)}, got {show(fmt)}")
        if frames.shape[3] != 3 or frames.shape[1] * frames.shape[2] > limits.max_image_pixels:
            raise bad(
                path,
                f"expected frames [T, H, W, 3] of at most {limits.max_image_pixels} "
                f"pixels, got shape {list(frames.shape)}",
            )
        return frames

    return Codec(pack, unpack)


def _episode_views_codec() -> Codec:
    frames = _episode_frames_codec()

    def pack(views: dict[str, np.ndarray], out: FrameWriter) -> dict[str, Any]:
        return {view: frames.pack(stack, out) for view, stack in views.items()}

    def unpack(d: Any, path: str, reader: FrameReader) -> dict[str, np.ndarray]:
        if not isinstance(d, dict) or not d:
            raise bad(path, f"expected a non-empty map view -> frames, got {show(d)}")
        for view in d:
            check_str(view, path)
        return {view: frames.unpack(v, f"{path}[{view!r}]", reader) for view, v in d.items()}

    return Codec(pack, unpack)


EPISODE_VIEWS = _episode_views_codec()
FLAG = Codec(lambda v, enc: bool(v), lambda v, p, lim: check_type(v, p, bool, "a bool"))
SOURCES = ("online", "demo", "intervention")
"""Replay partitions an episode can be filed in."""


@dataclass
class EpisodeUpload(Message):
    """Actor -> learner: one finished episode of ``T`` steps (``T + 1`` frames).

    Per frame (``T + 1``): ``images``, ``state``, ``capture_ns`` (the observation's capture
    time), the critic's potential ``phi`` and ``done_prob`` (zeros without a critic). Per step
    (``T``): the ``action`` actually applied (arm units), the task ``reward``, ``success``,
    ``terminated``, ``intervention``, the ``policy_version`` that produced the action (-1:
    none), ``tick_ns`` (wall time the tick began) and ``action_ns`` (wall time the action
    arrived). ``late_ticks`` counts ticks whose action came late and was dropped (the arm held
    still). ``episode_id`` is unique per episode (actor id and sequence number): the learner
    stores each id once, so re-sending after a lost acknowledgement is safe.
    """

    TYPE: ClassVar[str] = "episode"
    STRICT: ClassVar[bool] = True
    id: int = wire(ID)
    episode_id: str = wire(NAME)
    actor: str = wire(NAME)
    seq: int = wire(ID)
    source: str = wire(NAME)
    instruction: str = wire(NAME)
    seed: int = wire(VERSION)
    split: str = wire(NAME)
    images: dict[str, np.ndarray] = wire(EPISODE_VIEWS)
    state: np.ndarray = wire(array_of("float32", 2))
    capture_ns: np.ndarray = wire(array_of("int64", 1))
    phi: np.ndarray = wire(array_of("float32", 1))
    done_prob: np.ndarray = wire(array_of("float32", 1))
    action: np.ndarray = wire(array_of("float32", 2))
    reward: np.ndarray = wire(array_of("float32", 1))
    success: np.ndarray = wire(array_of("bool", 1))
    terminated: np.ndarray = wire(array_of("bool", 1))
    intervention: np.ndarray = wire(array_of("bool", 1))
    policy_version: np.ndarray = wire(array_of("int64", 1))
    tick_ns: np.ndarray = wire(array_of("int64", 1))
    action_ns: np.ndarray = wire(array_of("int64", 1))
    late_ticks: int = wire(ID, 0)

    def __len__(self) -> int:
        return int(self.action.shape[0])

    def check(self, path: str) -> None:
        """Every array fits ``T`` steps and ``T + 1`` frames; values are finite."""
        if self.source not in SOURCES:
            raise bad("source", f"expected one of {list(SOURCES)}, got {self.source!r}")
        t = self.action.shape[0]
        if t < 1:
            raise bad("action", "an episode needs at least one step")
        per_frame = {"state": self.state, "capture_ns": self.capture_ns, "phi": self.phi}
        per_frame["done_prob"] = self.done_prob
        per_frame.update({f"images[{v!r}]": f for v, f in self.images.items()})
        for name, array in per_frame.items():
            if array.shape[0] != t + 1:
                raise bad(name, f"expected {t + 1} frames for {t} steps, got {array.shape[0]}")
        for name in ("reward", "success", "terminated", "intervention", "policy_version"):
            if getattr(self, name).shape[0] != t:
                raise bad(name, f"expected {t} steps, got {getattr(self, name).shape[0]}")
        for name in ("tick_ns", "action_ns"):
            if getattr(self, name).shape[0] != t:
                raise bad(name, f"expected {t} steps, got {getattr(self, name).shape[0]}")
        if self.terminated[:-1].any():
            raise bad("terminated", "only the last step may be terminal")
        for name in ("state", "phi", "done_prob", "action", "reward"):
            array = getattr(self, name)
            if not np.isfinite(array).all():
                raise bad(name, "contains NaN or inf")


@dataclass
class EpisodeAck(Message):
    """Learner -> actor: ``episode_id`` is durably stored (``stored``) or was already (``duplicate``).

    ``backlog_updates`` is how many gradient updates the learner still owes the data it holds
    (actors may wait for it to catch up); ``episodes`` counts the online episodes it holds.
    """

    TYPE: ClassVar[str] = "episode_ack"
    id: int = wire(ID)
    episode_id: str = wire(NAME)
    status: str = wire(NAME)
    episodes: int = wire(ID, 0)
    backlog_updates: int = wire(ID, 0)


@dataclass
class LearnerStatusRequest(Message):
    """Actor -> learner: is the learner there, and how far behind is its training?"""

    TYPE: ClassVar[str] = "learner_status"
    STRICT: ClassVar[bool] = True
    id: int = wire(ID)
    actor: str = wire(NAME, "actor")


@dataclass
class LearnerStatus(Message):
    """Learner -> actor: online episodes held, updates done and owed, last published version."""

    TYPE: ClassVar[str] = "learner_status_reply"
    id: int = wire(ID)
    episodes: int = wire(ID, 0)
    updates: int = wire(ID, 0)
    backlog_updates: int = wire(ID, 0)
    policy_version: int = wire(VERSION, -1)
    finished: bool = wire(FLAG, False)


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (Hello, ServerInfo, Heartbeat, ActRequest, ActReply, CriticRequest, CriticReply)
    + (ErrorReply, WeightsUpdate, WeightsAck)
    + (EpisodeUpload, EpisodeAck, LearnerStatusRequest, LearnerStatus)
}
"""Every message class by its wire ``type``."""


# ---------------------------------------------------------------- frames


Frames = list[Any]
"""One message on the wire: the msgpack header, then its data frames (bytes-like each)."""


def encode(
    message: Message,
    *,
    image_format: str = "raw",
    jpeg_quality: int = 90,
    frame_min_bytes: int = FRAME_MIN_BYTES,
) -> Frames:
    """Serialise a message to its frames; ``image_format`` (``raw`` or ``jpeg``) applies to its images.

    Array and JPEG bytes of at least ``frame_min_bytes`` become data frames that view the
    arrays themselves (no copy here): send them before changing those arrays.
    """
    out = FrameWriter(Encoding(image_format, jpeg_quality), frame_min_bytes)
    body = message.to_wire(out)
    header = msgpack.packb({"v": PROTOCOL_VERSION, "type": message.TYPE, **body}, use_bin_type=True)
    return [header, *out.frames]


def encode_inline(message: Message, *, image_format: str = "raw", jpeg_quality: int = 90) -> bytes:
    """Serialise a message to one frame, every byte inline: for blobs that are stored and
    re-sent whole (the learner endpoint's episodes, which an actor may spool to disk)."""
    (frame,) = encode(
        message, image_format=image_format, jpeg_quality=jpeg_quality, frame_min_bytes=MAX_ID
    )
    return frame


def encode_timed(reply: ActReply | CriticReply) -> Frames:
    """Encode a reply, filling its ``timings.encode_us`` with the time the encoding took.

    Everything but the small ``timings`` map is packed and timed first; the timings go last,
    so the reply is packed once and the figure covers all of it but those few bytes.
    """
    t0 = time.perf_counter()
    out = FrameWriter()
    body = reply.to_wire(out)
    del body["timings"]
    head = msgpack.packb({"v": PROTOCOL_VERSION, "type": reply.TYPE, **body}, use_bin_type=True)
    # A map of under 16 entries has a one-byte header (0x80 | entries): one more entry follows.
    assert head[0] == 0x80 | (len(body) + 2), "replies have fewer than 15 fields"
    reply.timings.encode_us = (time.perf_counter() - t0) * 1e6
    timings = msgpack.packb({"timings": pack_fields(reply.timings)}, use_bin_type=True)
    return [bytes((head[0] + 1,)) + head[1:] + timings[1:], *out.frames]


def _reject_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(ErrorCode.MALFORMED, None, f"msgpack extension type {code} is not allowed")


def unpack_map(data: Any, limits: Limits) -> dict[str, Any]:
    """Bounded, strictly typed msgpack unpacking of one message map (no ext types)."""
    if len(data) > limits.max_message_bytes:
        raise ProtocolError(
            ErrorCode.MALFORMED,
            None,
            f"message of {len(data)} bytes exceeds {limits.max_message_bytes}",
        )
    try:
        d = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_message_bytes,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
            max_ext_len=0,
            ext_hook=_reject_ext,
        )
    except ProtocolError:
        raise
    except (ValueError, TypeError) as e:
        # msgpack's errors (ExtraData, FormatError, StackError, bad UTF-8) are ValueErrors.
        raise ProtocolError(
            ErrorCode.MALFORMED, None, f"not one msgpack map: {type(e).__name__}: {e}"
        ) from None
    if not isinstance(d, dict):
        raise ProtocolError(
            ErrorCode.MALFORMED, None, f"expected a msgpack map, got {type(d).__name__}"
        )
    return d


def peek_id(d: dict[str, Any]) -> int | None:
    """The request id of a parsed map if it is a valid one, else None (for error replies)."""
    value = d.get("id")
    return (
        value
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID
        else None
    )


def _byte_views(frames: Sequence[Any]) -> list[memoryview]:
    views = []
    for f in frames:
        view = memoryview(f)
        views.append(view if view.ndim == 1 and view.itemsize == 1 else view.cast("B"))
    return views


# The fast readers build this module's classes: imported after them (either module may load first).
from limbic.runtime import fast_path  # noqa: E402


def decode(
    frames: Sequence[Any] | bytes,
    limits: Limits | None = None,
    *,
    accept: tuple[str, ...] | None = None,
) -> Message:
    """Parse and check one message (its frames, or one bytes-like header frame alone).

    Raise :class:`ProtocolError` naming what is wrong. ``accept`` restricts the message types
    an endpoint handles (others get ``unknown_type``). Arrays in the message view the frames'
    memory, so the frames must outlive them (bytes and ZeroMQ frames do: the views hold them).
    """
    limits = limits or Limits()
    if isinstance(frames, bytes | bytearray | memoryview):
        frames = [frames]
    if not frames:
        raise ProtocolError(ErrorCode.MALFORMED, None, "no frames: expected a msgpack header")
    if len(frames) - 1 > limits.max_frames:
        raise ProtocolError(
            ErrorCode.MALFORMED,
            None,
            f"{len(frames) - 1} data frames exceed the limit of {limits.max_frames}",
        )
    data = _byte_views(frames[1:])
    total = len(frames[0]) + sum(len(f) for f in data)
    if total > limits.max_message_bytes:
        raise ProtocolError(
            ErrorCode.MALFORMED,
            None,
            f"message of {total} bytes in {len(frames)} frames exceeds {limits.max_message_bytes}",
        )
    d = unpack_map(frames[0], limits)
    try:
        v = d.get("v")
        if isinstance(v, bool) or not isinstance(v, int):
            raise ProtocolError(
                ErrorCode.MALFORMED, "v", f"expected the integer protocol version, got {show(v)}"
            )
        if v != PROTOCOL_VERSION:
            problem = f"protocol version {v} is not supported; this side speaks {PROTOCOL_VERSION}"
            raise ProtocolError(ErrorCode.VERSION_MISMATCH, "v", problem)
        kind = d.get("type")
        if (
            not isinstance(kind, str)
            or kind not in MESSAGE_TYPES
            or (accept is not None and kind not in accept)
        ):
            expected = sorted(accept if accept is not None else MESSAGE_TYPES)
            raise ProtocolError(
                ErrorCode.UNKNOWN_TYPE, "type", f"expected one of {expected}, got {show(kind)}"
            )
        fast = fast_path.READERS.get(kind)
        message = None if fast is None else fast(d, data, limits)
        if message is not None:
            return message
        reader = FrameReader(data, limits)
        message = MESSAGE_TYPES[kind].from_wire(d, reader)
        reader.check_all_taken()
        return message
    except ProtocolError as e:
        e.request_id = peek_id(d)
        raise
