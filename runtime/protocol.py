"""The wire protocol between actor loops, the inference server and the learner.

One module that both sides import; it needs only numpy, msgpack and ``limbic.contracts``
(JPEG frames lazily import Pillow through :mod:`limbic.runtime.jpeg`). ``docs/protocol.md``
describes the same bytes for clients written without limbic; keep the two in step.

Every message is one msgpack map with string keys ``v`` (protocol version), ``type`` and
``id`` (chosen by the requester, echoed in the reply). Arrays travel as
``{"dtype", "shape", "data"}`` with little-endian C-order bytes; images as raw uint8 arrays
or JPEG, chosen per request. Unpacking is bounded and strictly typed: no ext types, string
map keys only, no pickle anywhere. Every decoding failure is a :class:`ProtocolError` naming
the field, the value and the expected form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack
import numpy as np

from limbic.contracts import SCHEMA_VERSION, ContractError, Observation

PROTOCOL_VERSION = 1
"""Version of this wire format; a message carrying another ``v`` gets ``version_mismatch``."""

DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("bool", "uint8", "int8", "uint16", "int16", "int32", "int64")
    + ("float16", "float32", "float64")
}
"""Array dtypes allowed on the wire, by wire name; always little-endian."""

IMAGE_FORMATS = ("raw", "jpeg")
"""How a client may send a camera frame; it chooses per request."""

MAX_NDIM = 8
MAX_ID = 2**63 - 1


class ErrorCode(StrEnum):
    """The ``code`` of an error reply; a client maps each to a typed exception."""

    MALFORMED = "malformed"
    """Not a msgpack map, or a map without the envelope keys."""
    VERSION_MISMATCH = "version_mismatch"
    """``v`` is not this server's :data:`PROTOCOL_VERSION`."""
    UNKNOWN_TYPE = "unknown_type"
    """``type`` names no message this endpoint handles."""
    BAD_FIELD = "bad_field"
    """A field is missing or of the wrong type, dtype, shape or value; ``field`` names it."""
    NOT_SERVED = "not_served"
    """The request needs a model this server does not host (e.g. no critic loaded)."""
    DEADLINE_EXCEEDED = "deadline_exceeded"
    """The request waited past its ``timeout_ms`` before a batch picked it up."""
    INVALID_OUTPUT = "invalid_output"
    """The model produced a non-finite value; nothing unsafe is sent to an arm."""
    STALE_VERSION = "stale_version"
    """A weight update's version is not above the live one."""
    INTERNAL = "internal"
    """The server failed while handling a valid request; ``traceback`` says where."""


class ProtocolError(ValueError):
    """A message does not follow the protocol; ``code`` and ``field`` say what and where.

    ``request_id`` is the id of the offending request when it could be read (for the reply).
    """

    def __init__(
        self, code: ErrorCode, field_name: str | None, problem: str, request_id: int | None = None
    ):
        self.code = ErrorCode(code)
        self.field = field_name
        self.problem = problem
        self.request_id = request_id
        where = f"{field_name}: " if field_name else ""
        super().__init__(f"[{self.code.value}] {where}{problem}")


@dataclass(frozen=True)
class Limits:
    """Bounds for decoding one message; anything larger is rejected before it is built."""

    max_message_bytes: int = 16 * 2**20
    max_str_len: int = 4096
    max_array_len: int = 1024
    max_map_len: int = 256
    max_image_pixels: int = 4096 * 4096


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(field_name: str, problem: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_FIELD, field_name, problem)


def _take(d: dict[str, Any], key: str, path: str, kind: type | tuple[type, ...], *, optional=False):
    """Return ``d[key]`` if it is of ``kind`` (bool never counts as int or float)."""
    name = f"{path}.{key}" if path else key
    if key not in d or (optional and d[key] is None):
        if optional:
            return None
        raise _bad(name, "missing")
    value = d[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise _bad(name, f"expected {_kind_name(kinds)}, got a bool")
    if not isinstance(value, kinds):
        raise _bad(name, f"expected {_kind_name(kinds)}, got {type(value).__name__} {_show(value)}")
    return value


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bytes: "binary", bool: "a bool"}
    names |= {dict: "a map", list: "an array"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _take_int(d, key, path, *, low=0, high=MAX_ID, optional=False) -> int | None:
    value = _take(d, key, path, int, optional=optional)
    if value is not None and not low <= value <= high:
        raise _bad(
            f"{path}.{key}" if path else key, f"expected an integer in [{low}, {high}], got {value}"
        )
    return value


def _take_str(d, key, path, *, optional=False, nonempty=True) -> str | None:
    value = _take(d, key, path, str, optional=optional)
    if value is not None and nonempty and not value.strip():
        raise _bad(f"{path}.{key}" if path else key, "expected a non-empty string")
    return value


def _check_keys(d: dict[str, Any], path: str, allowed: set[str]) -> None:
    for key in d:
        if not isinstance(key, str):
            raise _bad(path or "message", f"map keys must be strings, got {_show(key)}")
        if key not in allowed:
            raise _bad(
                f"{path}.{key}" if path else key,
                f"unknown field; expected one of {sorted(allowed)}",
            )


# ---------------------------------------------------------------- arrays and images


def pack_array(array: np.ndarray) -> dict[str, Any]:
    """Wire form of a numpy array: ``{"dtype", "shape", "data"}``, little-endian C order."""
    array = np.asarray(array)
    name = array.dtype.name
    if name not in DTYPES:
        raise ContractError(
            "array", f"dtype {array.dtype} cannot travel; use one of {sorted(DTYPES)}"
        )
    array = np.ascontiguousarray(array, dtype=DTYPES[name])
    # A memoryview lets msgpack copy the bytes once, straight into its output buffer.
    return {"dtype": name, "shape": list(array.shape), "data": memoryview(array).cast("B")}


def unpack_array(
    d: Any, path: str, *, dtype: str | None = None, ndim: int | None = None
) -> np.ndarray:
    """Inverse of :func:`pack_array`; checks dtype, shape and byte count before viewing the data."""
    if not isinstance(d, dict):
        raise _bad(path, f"expected an array map {{dtype, shape, data}}, got {type(d).__name__}")
    _check_keys(d, path, {"dtype", "shape", "data"})
    name = _take(d, "dtype", path, str)
    if name not in DTYPES:
        raise _bad(f"{path}.dtype", f"expected one of {sorted(DTYPES)}, got {_show(name)}")
    if dtype is not None and name != dtype:
        raise _bad(path, f"expected dtype {dtype}, got {name}")
    shape = _take(d, "shape", path, list)
    if len(shape) > MAX_NDIM or any(
        isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in shape
    ):
        raise _bad(
            f"{path}.shape",
            f"expected at most {MAX_NDIM} non-negative integers, got {_show(shape)}",
        )
    if ndim is not None and len(shape) != ndim:
        raise _bad(path, f"expected {ndim} dimension(s), got shape {shape}")
    data = _take(d, "data", path, bytes)
    dt = DTYPES[name]
    expected = math.prod(shape) * dt.itemsize
    if len(data) != expected:
        raise _bad(
            f"{path}.data", f"shape {shape} of {name} needs {expected} bytes, got {len(data)}"
        )
    return np.frombuffer(data, dtype=dt).reshape(shape)


def pack_image(
    image: np.ndarray, image_format: str = "raw", jpeg_quality: int = 90
) -> dict[str, Any]:
    """Wire form of a ``uint8[H, W, 3]`` frame, raw or JPEG-compressed."""
    if image_format == "raw":
        return {"format": "raw", **pack_array(image)}
    if image_format == "jpeg":
        from limbic.runtime import jpeg

        return {"format": "jpeg", "data": jpeg.encode(image, jpeg_quality)}
    raise ContractError("image_format", f"expected one of {IMAGE_FORMATS}, got {image_format!r}")


def unpack_image(d: Any, path: str, limits: Limits) -> np.ndarray:
    """Inverse of :func:`pack_image`: a ``uint8[H, W, 3]`` array."""
    if not isinstance(d, dict):
        raise _bad(path, f"expected an image map with a 'format' key, got {type(d).__name__}")
    fmt = _take(d, "format", path, str)
    if fmt == "raw":
        image = unpack_array(
            {k: v for k, v in d.items() if k != "format"}, path, dtype="uint8", ndim=3
        )
        if image.shape[2] != 3:
            raise _bad(path, f"expected shape [H, W, 3], got {list(image.shape)}")
    elif fmt == "jpeg":
        _check_keys(d, path, {"format", "data"})
        from limbic.runtime import jpeg

        image = jpeg.decode(_take(d, "data", path, bytes), path, limits.max_image_pixels)
    else:
        raise _bad(f"{path}.format", f"expected one of {list(IMAGE_FORMATS)}, got {_show(fmt)}")
    if image.shape[0] * image.shape[1] > limits.max_image_pixels:
        raise _bad(
            path, f"{image.shape[0]}x{image.shape[1]} exceeds {limits.max_image_pixels} pixels"
        )
    return image


def _pack_views(images: dict[str, np.ndarray], image_format: str, quality: int) -> dict[str, Any]:
    return {view: pack_image(image, image_format, quality) for view, image in images.items()}


def _unpack_views(d: Any, path: str, limits: Limits) -> dict[str, np.ndarray]:
    if not isinstance(d, dict) or not d:
        raise _bad(path, f"expected a non-empty map view -> image, got {_show(d)}")
    out = {}
    for view, image in d.items():
        if not isinstance(view, str) or not view:
            raise _bad(path, f"view names must be non-empty strings, got {_show(view)}")
        out[view] = unpack_image(image, f"{path}[{view!r}]", limits)
    return out


# ---------------------------------------------------------------- model metadata


@dataclass(frozen=True)
class PolicySpec:
    """What a served policy consumes and produces; sent to clients in :class:`ServerInfo`."""

    views: tuple[str, ...]
    image_hw: tuple[int, int]
    state_dim: int
    action_dim: int
    chunk_len: int
    lang_dim: int

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for the wire and for ONNX metadata."""
        return {
            "views": list(self.views),
            "image_hw": list(self.image_hw),
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "chunk_len": self.chunk_len,
            "lang_dim": self.lang_dim,
        }

    @classmethod
    def from_dict(cls, d: Any, path: str = "policy") -> PolicySpec:
        """Inverse of :meth:`to_dict`, with errors naming the field."""
        if not isinstance(d, dict):
            raise _bad(path, f"expected a map, got {_show(d)}")
        return cls(
            views=_views(d, path),
            image_hw=_hw(d, path),
            state_dim=_take_int(d, "state_dim", path, low=0, high=2**20),
            action_dim=_take_int(d, "action_dim", path, low=1, high=2**20),
            chunk_len=_take_int(d, "chunk_len", path, low=1, high=2**20),
            lang_dim=_take_int(d, "lang_dim", path, low=1, high=2**20),
        )


@dataclass(frozen=True)
class CriticSpec:
    """What a served progress critic consumes; sent to clients in :class:`ServerInfo`."""

    views: tuple[str, ...]
    image_hw: tuple[int, int]
    lang_dim: int

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for the wire and for ONNX metadata."""
        return {
            "views": list(self.views),
            "image_hw": list(self.image_hw),
            "lang_dim": self.lang_dim,
        }

    @classmethod
    def from_dict(cls, d: Any, path: str = "critic") -> CriticSpec:
        """Inverse of :meth:`to_dict`, with errors naming the field."""
        if not isinstance(d, dict):
            raise _bad(path, f"expected a map, got {_show(d)}")
        return cls(
            views=_views(d, path),
            image_hw=_hw(d, path),
            lang_dim=_take_int(d, "lang_dim", path, low=1, high=2**20),
        )


def _views(d: dict, path: str) -> tuple[str, ...]:
    views = _take(d, "views", path, list)
    if (
        not views
        or not all(isinstance(v, str) and v for v in views)
        or len(set(views)) != len(views)
    ):
        raise _bad(f"{path}.views", f"expected distinct non-empty view names, got {_show(views)}")
    return tuple(views)


def _hw(d: dict, path: str) -> tuple[int, int]:
    hw = _take(d, "image_hw", path, list)
    if len(hw) != 2 or not all(
        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in hw
    ):
        raise _bad(
            f"{path}.image_hw", f"expected [height, width] positive integers, got {_show(hw)}"
        )
    return (hw[0], hw[1])


# ---------------------------------------------------------------- messages


@dataclass
class Timings:
    """Where a request's time went inside the server, in microseconds.

    ``queue_us`` from decoded to picked up by a batch; ``decode_us`` unpacking, validating
    and JPEG-decoding it; ``assemble_us`` stacking the batch; ``infer_us`` the model call for
    the whole batch; ``encode_us`` packing this reply; ``batch_size`` requests in the batch.
    """

    queue_us: float = 0.0
    decode_us: float = 0.0
    assemble_us: float = 0.0
    infer_us: float = 0.0
    encode_us: float = 0.0
    batch_size: int = 0

    def to_wire(self) -> dict[str, Any]:
        """Plain-data form."""
        return {
            "queue_us": self.queue_us,
            "decode_us": self.decode_us,
            "assemble_us": self.assemble_us,
            "infer_us": self.infer_us,
            "encode_us": self.encode_us,
            "batch_size": self.batch_size,
        }

    @classmethod
    def from_wire(cls, d: Any) -> Timings:
        """Inverse of :meth:`to_wire`."""
        if not isinstance(d, dict):
            raise _bad("timings", f"expected a map, got {_show(d)}")
        values = {k: float(_take(d, k, "timings", (int, float))) for k in cls.__dataclass_fields__}
        values["batch_size"] = int(values["batch_size"])
        return cls(**values)


@dataclass
class Hello:
    """Client -> server on connect: asks for :class:`ServerInfo`."""

    id: int
    client: str = "limbic-client"
    TYPE = "hello"

    def to_wire(self, **_: Any) -> dict[str, Any]:
        """Body of the message (without ``v``/``type``)."""
        return {"id": self.id, "client": self.client}

    @classmethod
    def from_wire(cls, d: dict[str, Any], limits: Limits) -> Hello:
        """Parse and check the body."""
        _check_keys(d, "", {"v", "type", "id", "client"})
        return cls(id=_take_int(d, "id", ""), client=_take_str(d, "client", ""))


@dataclass
class ServerInfo:
    """Server -> client reply to :class:`Hello`: what is served and the limits in force."""

    id: int
    server: str
    max_message_bytes: int
    heartbeat_interval_ms: int
    client_timeout_ms: int
    policy: PolicySpec | None = None
    critic: CriticSpec | None = None
    policy_version: int = -1
    critic_version: int = -1
    backend: str = "torch"
    protocol_version: int = PROTOCOL_VERSION
    schema_version: int = SCHEMA_VERSION
    image_formats: tuple[str, ...] = IMAGE_FORMATS
    TYPE = "hello_reply"

    def to_wire(self, **_: Any) -> dict[str, Any]:
        """Body of the message."""
        return {
            "id": self.id,
            "server": self.server,
            "protocol_version": self.protocol_version,
            "schema_version": self.schema_version,
            "max_message_bytes": self.max_message_bytes,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "client_timeout_ms": self.client_timeout_ms,
            "image_formats": list(self.image_formats),
            "backend": self.backend,
            "policy": None if self.policy is None else self.policy.to_dict(),
            "critic": None if self.critic is None else self.critic.to_dict(),
            "policy_version": self.policy_version,
            "critic_version": self.critic_version,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any], limits: Limits) -> ServerInfo:
        """Parse and check the body."""
        policy = _take(d, "policy", "", dict, optional=True)
        critic = _take(d, "critic", "", dict, optional=True)
        return cls(
            id=_take_int(d, "id", ""),
            server=_take_str(d, "server", ""),
            protocol_version=_take_int(d, "protocol_version", ""),
            schema_version=_take_int(d, "schema_version", ""),
            max_message_bytes=_take_int(d, "max_message_bytes", ""),
            heartbeat_interval_ms=_take_int(d, "heartbeat_interval_ms", ""),
            client_timeout_ms=_take_int(d, "client_timeout_ms", ""),
            image_formats=tuple(_take(d, "image_formats", "", list)),
            backend=_take_str(d, "backend", ""),
            policy=None if policy is None else PolicySpec.from_dict(policy),
            critic=None if critic is None else CriticSpec.from_dict(critic),
            policy_version=_take_int(d, "policy_version", "", low=-1),
            critic_version=_take_int(d, "critic_version", "", low=-1),
        )


@dataclass
class Heartbeat:
    """Liveness probe, both ways: a client sends one, the server answers with its own.

    The server's heartbeat carries the live model versions so a client sees a swap.
    """

    id: int
    time_ns: int = 0
    policy_version: int = -1
    critic_version: int = -1
    TYPE = "heartbeat"

    def to_wire(self, **_: Any) -> dict[str, Any]:
        """Body of the message."""
        return {
            "id": self.id,
            "time_ns": self.time_ns,
            "policy_version": self.policy_version,
            "critic_version": self.critic_version,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any], limits: Limits) -> Heartbeat:
        """Parse and check the body."""
        _check_keys(d, "", {"v", "type", "id", "time_ns", "policy_version", "critic_version"})
        time_ns = _take_int(d, "time_ns", "", optional=True)
        policy_version = _take_int(d, "policy_version", "", low=-1, optional=True)
        critic_version = _take_int(d, "critic_version", "", low=-1, optional=True)
        return cls(
            id=_take_int(d, "id", ""),
            time_ns=0 if time_ns is None else time_ns,
            policy_version=-1 if policy_version is None else policy_version,
            critic_version=-1 if critic_version is None else critic_version,
        )


_OBS_KEYS = {
    "timestamp_ns",
    "images",
    "frame_timestamps_ns",
    "state",
    "instruction",
    "episode_id",
    "step",
}


def _pack_observation(obs: Observation, image_format: str, quality: int) -> dict[str, Any]:
    return {
        "timestamp_ns": int(obs.timestamp_ns),
        "images": _pack_views(obs.images, image_format, quality),
        "frame_timestamps_ns": {k: int(v) for k, v in obs.frame_timestamps_ns.items()},
        "state": pack_array(np.asarray(obs.state)),
        "instruction": obs.instruction,
        "episode_id": obs.episode_id,
        "step": int(obs.step),
    }


def _unpack_observation(d: Any, path: str, limits: Limits) -> Observation:
    if not isinstance(d, dict):
        raise _bad(path, f"expected an observation map, got {_show(d)}")
    _check_keys(d, path, _OBS_KEYS)
    stamps = _take(d, "frame_timestamps_ns", path, dict, optional=True) or {}
    obs = Observation(
        timestamp_ns=_take_int(d, "timestamp_ns", path),
        images=_unpack_views(_take(d, "images", path, dict), f"{path}.images", limits),
        state=unpack_array(_take(d, "state", path, dict), f"{path}.state", dtype="float32", ndim=1),
        instruction=_take_str(d, "instruction", path),
        episode_id=_take_str(d, "episode_id", path),
        step=_take_int(d, "step", path),
        frame_timestamps_ns=stamps,
    )
    try:
        return obs.validate()
    except ContractError as e:
        raise _bad(f"{path}.{e.field}", str(e).split(": ", 1)[1]) from None


@dataclass
class ActRequest:
    """Client -> server: an observation; the reply is an :class:`ActReply` or an error.

    ``timeout_ms`` is the client's remaining budget: a request still queued past it is
    answered with ``deadline_exceeded`` instead of being run.
    """

    id: int
    observation: Observation
    timeout_ms: int | None = None
    TYPE = "act"

    def to_wire(self, image_format: str = "raw", jpeg_quality: int = 90) -> dict[str, Any]:
        """Body of the message; frames packed as ``image_format``."""
        return {
            "id": self.id,
            "obs": _pack_observation(self.observation, image_format, jpeg_quality),
            "timeout_ms": self.timeout_ms,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any], limits: Limits) -> ActRequest:
        """Parse and check the body."""
        _check_keys(d, "", {"v", "type", "id", "obs", "timeout_ms"})
        return cls(
            id=_take_int(d, "id", ""),
            observation=_unpack_observation(_take(d, "obs", "", dict), "obs", limits),
            timeout_ms=_take_int(d, "timeout_ms", "", optional=True),
        )


@dataclass
class ActReply:
    """Server -> client: an action chunk ``float32[chunk, A]`` and who computed it."""

    id: int
    actions: np.ndarray
    policy_version: int
    timings: Timings
    TYPE = "act_reply"

    def to_wire(self, **_: Any) -> dict[str, Any]:
        """Body of the message."""
        return {
            "id": self.id,
            "actions": pack_array(self.actions),
            "policy_version": self.policy_version,
            "timings": self.timings.to_wire(),
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any], limits: Limits) -> ActReply:
        """Parse and check the body."""
        return cls(
            id=_take_int(d, "id", ""),
            actions=unpack_array(_take(d, "actions", "", dict), "actions", dtype="float32", ndim=2),
            policy_version=_take_int(d, "policy_version", "", low=-1),
            timings=Timings.from_wire(_take(d, "timings", "", dict)),
        )


@dataclass
class CriticRequest:
    """Client -> server: judge progress along ``frames`` (two or more, each a view map).

    Entry ``i`` of the reply describes ``frames[i + 1]``: progress from ``frames[i]``, the done
    probability, and the fused value. ``phi0`` is the value of ``frames[0]`` (0 at an episode's
    start); ``goal`` (optional) is a frame of the finished task for the backward estimate.
    """

    id: int
    instruction: str
    frames: list[dict[str, np.ndarray]]
    goal: dict[str, np.ndarray] | None = None
    phi0: float = 0.0
    timeout_ms: int | None = None
    TYPE = "critic"

    def to_wire(self, image_format: str = "raw", jpeg_quality: int = 90) -> dict[str, Any]:
        """Body of the message; frames packed as ``image_format``."""
        return {
            "id": self.id,
            "instruction": self.instruction,
            "frames": [_pack_views(f, image_format, jpeg_quality) for f in self.frames],
            "goal": None
            if self.goal is None
            else _pack_views(self.goal, image_format, jpeg_quality),
            "phi0": float(self.phi0),
            "timeout_ms": self.timeout_ms,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any], limits: Limits) -> CriticRequest:
        """Parse and check the body."""
        _check_keys(
            d, "", {"v", "type", "id", "instruction", "frames", "goal", "phi0", "timeout_ms"}
        )
        frames = _take(d, "frames", "", list)
        if len(frames) < 2:
            raise _bad("frames", f"expected at least 2 frames, got {len(frames)}")
        goal = _take(d, "goal", "", dict, optional=True)
        phi0 = _take(d, "phi0", "", (int, float), optional=True)
        phi0 = 0.0 if phi0 is None else float(phi0)
        if not 0.0 <= phi0 <= 1.0:  # also rejects NaN
            raise _bad("phi0", f"expected a value in [0, 1], got {phi0}")
        return cls(
            id=_take_int(d, "id", ""),
            instruction=_take_str(d, "instruction", ""),
            frames=[_unpack_views(f, f"frames[{i}]", limits) for i, f in enumerate(frames)],
            goal=None if goal is None else _unpack_views(goal, "goal", limits),
            phi0=phi0,
            timeout_ms=_take_int(d, "timeout_ms", "", optional=True),
        )


@dataclass
class CriticReply:
    """Server -> client: per step progress, done probability and value, ``float32[N - 1]`` each."""

    id: int
    progress: np.ndarray
    done_prob: np.ndarray
    value: np.ndarray
    critic_version: int
    timings: Timings
    TYPE = "critic_reply"

    def to_wire(self, **_: Any) -> dict[str, Any]:
        """Body of the message."""
        return {
            "id": self.id,
            "progress": pack_array(self.progress),
            "done_prob": pack_array(self.done_prob),
            "value": pack_array(self.value),
            "critic_version": self.critic_version,
            "timings": self.timings.to_wire(),
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any], limits: Limits) -> CriticReply:
        """Parse and check the body."""
        arrays = {
            k: unpack_array(_take(d, k, "", dict), k, dtype="float32", ndim=1)
            for k in ("progress", "done_prob", "value")
        }
        return cls(
            id=_take_int(d, "id", ""),
            critic_version=_take_int(d, "critic_version", "", low=-1),
            timings=Timings.from_wire(_take(d, "timings", "", dict)),
            **arrays,
        )


@dataclass
class ErrorReply:
    """Server -> client: the request failed; ``field`` names the bad field when there is one.

    ``id`` is ``None`` when the request could not be parsed far enough to read its id.
    """

    id: int | None
    code: ErrorCode
    message: str
    field: str | None = None
    traceback: str = ""
    TYPE = "error"

    @classmethod
    def of(cls, request_id: int | None, error: ProtocolError) -> ErrorReply:
        """The reply for a :class:`ProtocolError`."""
        return cls(request_id, error.code, str(error), error.field)

    def to_wire(self, **_: Any) -> dict[str, Any]:
        """Body of the message."""
        return {
            "id": self.id,
            "code": ErrorCode(self.code).value,
            "field": self.field,
            "message": self.message,
            "traceback": self.traceback,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any], limits: Limits) -> ErrorReply:
        """Parse and check the body."""
        code = _take_str(d, "code", "")
        try:
            code = ErrorCode(code)
        except ValueError:
            raise _bad("code", f"unknown error code {code!r}") from None
        return cls(
            id=_take_int(d, "id", "", optional=True),
            code=code,
            message=_take(d, "message", "", str),
            field=_take(d, "field", "", str, optional=True),
            traceback=_take(d, "traceback", "", str, optional=True) or "",
        )


@dataclass
class WeightsUpdate:
    """Learner -> server (weights endpoint): new weights for ``target`` at ``version``.

    ``tensors`` maps every state-dict key of the served model to an array of the same shape;
    the version must be above the live one. The reply is :class:`WeightsAck` once live.
    """

    id: int
    target: str
    version: int
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    TYPE = "weights"

    def to_wire(self, **_: Any) -> dict[str, Any]:
        """Body of the message."""
        return {
            "id": self.id,
            "target": self.target,
            "version": self.version,
            "tensors": {name: pack_array(a) for name, a in self.tensors.items()},
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any], limits: Limits) -> WeightsUpdate:
        """Parse and check the body."""
        _check_keys(d, "", {"v", "type", "id", "target", "version", "tensors"})
        target = _take_str(d, "target", "")
        if target not in ("policy", "critic"):
            raise _bad("target", f"expected 'policy' or 'critic', got {target!r}")
        tensors = _take(d, "tensors", "", dict)
        out = {}
        for name, array in tensors.items():
            if not isinstance(name, str):
                raise _bad("tensors", f"tensor names must be strings, got {_show(name)}")
            out[name] = unpack_array(array, f"tensors[{name!r}]")
        return cls(
            id=_take_int(d, "id", ""),
            target=target,
            version=_take_int(d, "version", ""),
            tensors=out,
        )


@dataclass
class WeightsAck:
    """Server -> learner: ``version`` of ``target`` is live; every later reply uses it or newer."""

    id: int
    target: str
    version: int
    TYPE = "weights_reply"

    def to_wire(self, **_: Any) -> dict[str, Any]:
        """Body of the message."""
        return {"id": self.id, "target": self.target, "version": self.version}

    @classmethod
    def from_wire(cls, d: dict[str, Any], limits: Limits) -> WeightsAck:
        """Parse and check the body."""
        return cls(
            id=_take_int(d, "id", ""),
            target=_take_str(d, "target", ""),
            version=_take_int(d, "version", ""),
        )


Message = (
    (
        Hello
        | ServerInfo
        | Heartbeat
        | ActRequest
        | ActReply
        | CriticRequest
        | CriticReply
        | ErrorReply
    )
    | WeightsUpdate
    | WeightsAck
)

MESSAGE_TYPES: dict[str, type] = {
    cls.TYPE: cls
    for cls in (Hello, ServerInfo, Heartbeat, ActRequest, ActReply, CriticRequest, CriticReply)
    + (ErrorReply, WeightsUpdate, WeightsAck)
}
"""Every message class by its wire ``type``."""


def encode(message: Message, *, image_format: str = "raw", jpeg_quality: int = 90) -> bytes:
    """Serialise a message; ``image_format`` (``raw`` or ``jpeg``) applies to its frames."""
    body = message.to_wire(image_format=image_format, jpeg_quality=jpeg_quality)
    return msgpack.packb({"v": PROTOCOL_VERSION, "type": message.TYPE, **body}, use_bin_type=True)


def _reject_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(ErrorCode.MALFORMED, None, f"msgpack extension type {code} is not allowed")


def unpack_map(data: bytes, limits: Limits) -> dict[str, Any]:
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
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        # msgpack's errors are ValueError subclasses (and UnicodeDecodeError for bad UTF-8).
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


def decode(
    data: bytes, limits: Limits | None = None, *, accept: tuple[str, ...] | None = None
) -> Message:
    """Parse and check one message; raise :class:`ProtocolError` naming what is wrong.

    ``accept`` restricts the message types an endpoint handles (others get ``unknown_type``).
    """
    limits = limits or Limits()
    d = unpack_map(data, limits)
    try:
        return _decode_map(d, limits, accept)
    except ProtocolError as e:
        e.request_id = peek_id(d)
        raise


def _decode_map(d: dict[str, Any], limits: Limits, accept: tuple[str, ...] | None) -> Message:
    v = d.get("v")
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(
            ErrorCode.MALFORMED, "v", f"expected the integer protocol version, got {_show(v)}"
        )
    if v != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.VERSION_MISMATCH,
            "v",
            f"protocol version {v} is not supported; this side speaks {PROTOCOL_VERSION}",
        )
    kind = d.get("type")
    if (
        not isinstance(kind, str)
        or kind not in MESSAGE_TYPES
        or (accept is not None and kind not in accept)
    ):
        expected = sorted(accept if accept is not None else MESSAGE_TYPES)
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE, "type", f"expected one of {expected}, got {_show(kind)}"
        )
    return MESSAGE_TYPES[kind].from_wire(d, limits)
