"""How values travel on the wire and are checked on the way in: the protocol's building blocks.

Arrays are ``{"dtype", "shape", "data"}`` maps with little-endian C-order bytes, or
``{"dtype", "shape", "frame"}`` when the bytes travel out of band as a ZeroMQ frame of their
own (:class:`FrameWriter` gathers such frames while packing, :class:`FrameReader` hands each
to exactly one field while unpacking); camera frames are raw uint8 arrays or JPEG; scalars
are checked for type and range (a bool never passes for a number). A :class:`Codec` pairs how one dataclass field is packed with how it is
checked, and :func:`pack_fields` / :func:`unpack_fields` apply them to whole dataclasses, so
:mod:`limbic.runtime.protocol` declares its messages as plain dataclasses. numpy and msgpack
only (JPEG lazily loads OpenCV). Every failure is a :class:`ProtocolError` naming the field.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from typing import Any

import numpy as np

from limbic.contracts import ContractError

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

FRAME_MIN_BYTES = 1024
"""Array and JPEG bytes of at least this size travel as a frame of their own, smaller ones inline.

A frame spares the sender's msgpack copy and the receiver's (it is viewed in place); below
about a kilobyte the frame's bookkeeping costs more than the copy it saves.
"""


class ErrorCode(StrEnum):
    """The ``code`` of an error reply; a client maps each to a typed exception."""

    MALFORMED = "malformed"
    """Not a msgpack map, a map without the envelope keys, or frames that are not one message."""
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
        super().__init__(f"[{self.code.value}] {field_name + ': ' if field_name else ''}{problem}")


@dataclass(frozen=True)
class Limits:
    """Bounds for decoding one message; anything larger is rejected before it is built."""

    max_message_bytes: int = 16 * 2**20
    """All frames of a message together (each frame alone is bounded by ZMQ_MAXMSGSIZE)."""
    max_str_len: int = 4096
    max_array_len: int = 1024
    max_map_len: int = 256
    max_image_pixels: int = 4096 * 4096
    max_frames: int = 1024
    """Data frames after the header frame."""


@dataclass(frozen=True)
class Encoding:
    """How a sender packs camera frames: ``raw`` or ``jpeg`` at ``jpeg_quality``."""

    image_format: str = "raw"
    jpeg_quality: int = 90


class FrameWriter:
    """Packing one message: its :class:`Encoding` and the data frames gathered so far.

    Data frames are numbered from 1 (the msgpack header is frame 0); a field whose bytes went
    out of band holds ``"frame": n`` instead of ``"data"``.
    """

    __slots__ = ("encoding", "frame_min_bytes", "frames")

    def __init__(self, encoding: Encoding | None = None, frame_min_bytes: int = FRAME_MIN_BYTES):
        self.encoding = encoding or Encoding()
        self.frame_min_bytes = frame_min_bytes
        self.frames: list[Any] = []

    def binary(self, data: Any, nbytes: int) -> dict[str, Any]:
        """``{"frame": n}`` for bytes that go out of band, ``{"data": data}`` for inline ones."""
        if nbytes < self.frame_min_bytes:
            return {"data": data}
        self.frames.append(data)
        return {"frame": len(self.frames)}


_INLINE = FrameWriter(frame_min_bytes=MAX_ID)  # packs every byte inline: for plain maps


class FrameReader:
    """Unpacking one message: its limits and its data frames, each claimed by exactly one field."""

    __slots__ = ("limits", "frames", "_taken")

    def __init__(self, frames: list[memoryview] | tuple = (), limits: Limits | None = None):
        self.limits = limits or Limits()
        self.frames = frames
        self._taken = [False] * len(frames)

    def take(self, number: Any, path: str) -> memoryview:
        """The bytes of data frame ``number`` (1-based) for the field at ``path``; raise if taken."""
        if type(number) is int and 0 < number <= len(self.frames) and not self._taken[number - 1]:
            self._taken[number - 1] = True
            return self.frames[number - 1]
        if not self.frames:
            raise bad(path, "this message has no data frames after its header")
        check_int(number, path, 1, len(self.frames))
        if self._taken[number - 1]:
            raise bad(path, f"frame {number} already holds the data of another field")
        self._taken[number - 1] = True
        return self.frames[number - 1]

    def check_all_taken(self) -> None:
        """Raise ``malformed`` if a data frame belongs to no field."""
        for i, taken in enumerate(self._taken):
            if not taken:
                raise ProtocolError(
                    ErrorCode.MALFORMED,
                    None,
                    f"data frame {i + 1} of {len(self.frames)} is referenced by no field",
                )


def show(value: Any) -> str:
    """A short repr of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def bad(path: str, problem: str) -> ProtocolError:
    """The ``bad_field`` error for ``path``."""
    return ProtocolError(ErrorCode.BAD_FIELD, path, problem)


# The checks below try the common, valid case first with exact type tests: msgpack builds
# exact ints, strs and lists (a bool is not an int here), and every request passes them.


def check_keys(d: dict[str, Any], path: str, allowed: frozenset[str] | set[str]) -> None:
    """Raise naming the first key of ``d`` that is not a string in ``allowed``."""
    if d.keys() <= allowed:
        return
    for key in d:
        if not isinstance(key, str):
            raise bad(path or "message", f"map keys must be strings, got {show(key)}")
        if key not in allowed:
            raise bad(
                f"{path}.{key}" if path else key,
                f"unknown field; expected one of {sorted(allowed)}",
            )


def check_type(value: Any, path: str, kind: type, what: str) -> Any:
    """``value`` if it is a ``kind`` (described as ``what`` in the error), else raise."""
    # bool is an int subclass in Python; on the wire it never stands for a number
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise bad(path, f"expected {what}, got {type(value).__name__} {show(value)}")
    return value


def check_int(value: Any, path: str, low: int = 0, high: int = MAX_ID) -> int:
    """An integer in ``[low, high]`` (not a bool), else raise."""
    if type(value) is int and low <= value <= high:
        return value
    check_type(value, path, int, "an integer")
    if not low <= value <= high:
        raise bad(path, f"expected an integer in [{low}, {high}], got {value}")
    return value


def check_str(value: Any, path: str, nonempty: bool = True) -> str:
    """A string (with a non-blank character unless ``nonempty`` is false), else raise."""
    if type(value) is str and (not nonempty or value.strip()):
        return value
    check_type(value, path, str, "a string")
    if nonempty and not value.strip():
        raise bad(path, "expected a non-empty string")
    return value


def check_float(value: Any, path: str, low: float = -math.inf, high: float = math.inf) -> float:
    """A finite number in ``[low, high]`` (not a bool), as float, else raise."""
    if type(value) is float and low <= value <= high:
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(path, f"expected a number, got {type(value).__name__} {show(value)}")
    if not low <= value <= high:  # also rejects NaN
        raise bad(path, f"expected a number in [{low}, {high}], got {value}")
    return float(value)


# ---------------------------------------------------------------- arrays and images


def pack_array(array: np.ndarray, out: FrameWriter = _INLINE) -> dict[str, Any]:
    """Wire form of a numpy array: ``{"dtype", "shape", "data" | "frame"}``, little-endian C order.

    Without a :class:`FrameWriter` the bytes go inline (``data``).
    """
    array = np.asarray(array)
    name = _WIRE_NAMES.get(array.dtype)
    if name is None:  # another byte order, or not a wire dtype at all
        name = array.dtype.name
        if name not in DTYPES:
            raise ContractError(
                "array", f"dtype {array.dtype} cannot travel; use one of {sorted(DTYPES)}"
            )
    if not array.flags.c_contiguous or array.dtype is not DTYPES[name]:
        array = np.asarray(array, dtype=DTYPES[name])  # (ascontiguousarray makes 0-d arrays 1-d)
        if not array.flags.c_contiguous:
            array = array.copy(order="C")
    # A memoryview: msgpack or ZeroMQ copies the bytes once, straight into its own buffer
    # (a view with a zero in its shape cannot be cast to bytes; a 0-d one is flattened first).
    data = memoryview(array.reshape(-1)).cast("B") if array.size else b""
    return {"dtype": name, "shape": list(array.shape), **out.binary(data, array.nbytes)}


_ARRAY_KEYS = frozenset({"dtype", "shape", "data", "frame"})
_WIRE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def _binary(d: dict[str, Any], path: str, frames: FrameReader | None) -> tuple[Any, str]:
    """The bytes of a map holding ``data`` (inline) or ``frame`` (out of band), and which key."""
    number, data = d.get("frame"), d.get("data")
    if number is not None:
        if data is not None:
            raise bad(path, "expected 'data' or 'frame', not both")
        if frames is None:
            raise bad(f"{path}.frame", "this message has no data frames after its header")
        return frames.take(number, f"{path}.frame"), "frame"
    if type(data) is bytes:
        return data, "data"
    if data is None:
        raise bad(f"{path}.data", "missing (or give 'frame', a data frame's number)")
    return check_type(data, f"{path}.data", bytes, "binary"), "data"


def _bad_shape(path: str, shape: Any) -> ProtocolError:
    return bad(
        f"{path}.shape", f"expected at most {MAX_NDIM} non-negative integers, got {show(shape)}"
    )


def unpack_array(
    d: Any,
    path: str,
    *,
    dtype: str | None = None,
    ndim: int | None = None,
    frames: FrameReader | None = None,
    keys: frozenset[str] = _ARRAY_KEYS,
) -> np.ndarray:
    """Inverse of :func:`pack_array`; checks dtype, shape and byte count before viewing the data.

    The array views the received bytes (inline or the frame's) without copying; it is read-only.
    ``keys`` are the keys the map may hold.
    """
    if not isinstance(d, dict):
        raise bad(path, f"expected an array map {{dtype, shape, data}}, got {type(d).__name__}")
    check_keys(d, path, keys)
    name, shape = d.get("dtype"), d.get("shape")
    if name is None or shape is None:
        raise bad(f"{path}.{'dtype' if name is None else 'shape'}", "missing")
    wire_dtype = DTYPES.get(name) if type(name) is str else None
    if wire_dtype is None:
        raise bad(f"{path}.dtype", f"expected one of {sorted(DTYPES)}, got {show(name)}")
    if dtype is not None and name != dtype:
        raise bad(path, f"expected dtype {dtype}, got {name}")
    if type(shape) is not list or len(shape) > MAX_NDIM:
        raise _bad_shape(path, shape)
    for n in shape:
        if type(n) is not int or n < 0:
            raise _bad_shape(path, shape)
    if ndim is not None and len(shape) != ndim:
        raise bad(path, f"expected {ndim} dimension(s), got shape {shape}")
    data, key = _binary(d, path, frames)
    expected = math.prod(shape) * wire_dtype.itemsize
    if len(data) != expected:
        raise bad(
            f"{path}.{key}", f"shape {shape} of {name} needs {expected} bytes, got {len(data)}"
        )
    return np.frombuffer(data, dtype=wire_dtype).reshape(shape)


def pack_image(
    image: np.ndarray, image_format: str = "raw", jpeg_quality: int = 90, out: FrameWriter = _INLINE
) -> dict[str, Any]:
    """Wire form of a ``uint8[H, W, 3]`` frame, raw or JPEG-compressed (bytes as ``out`` says)."""
    if image_format == "raw":
        return {"format": "raw", **pack_array(image, out)}
    if image_format == "jpeg":
        from limbic.runtime import jpeg

        data = jpeg.encode(image, jpeg_quality)
        return {"format": "jpeg", **out.binary(data, len(data))}
    raise ContractError("image_format", f"expected one of {IMAGE_FORMATS}, got {image_format!r}")


_RAW_IMAGE_KEYS = frozenset({"format", "dtype", "shape", "data", "frame"})
_JPEG_KEYS = frozenset({"format", "data", "frame"})


def unpack_image(d: Any, path: str, frames: FrameReader) -> np.ndarray:
    """Inverse of :func:`pack_image`: a ``uint8[H, W, 3]`` array."""
    if not isinstance(d, dict):
        raise bad(path, f"expected an image map with a 'format' key, got {type(d).__name__}")
    limits = frames.limits
    fmt = d.get("format")
    if fmt == "raw":
        image = unpack_array(d, path, dtype="uint8", ndim=3, frames=frames, keys=_RAW_IMAGE_KEYS)
        if image.shape[2] != 3:
            raise bad(path, f"expected shape [H, W, 3], got {list(image.shape)}")
    elif fmt == "jpeg":
        check_keys(d, path, _JPEG_KEYS)
        from limbic.runtime import jpeg

        data, _ = _binary(d, path, frames)
        image = jpeg.decode(data, path, limits.max_image_pixels)
    else:
        raise bad(f"{path}.format", f"expected one of {list(IMAGE_FORMATS)}, got {show(fmt)}")
    if image.shape[0] * image.shape[1] > limits.max_image_pixels:
        raise bad(
            path, f"{image.shape[0]}x{image.shape[1]} exceeds {limits.max_image_pixels} pixels"
        )
    return image


def pack_views(images: dict[str, np.ndarray], out: FrameWriter) -> dict[str, Any]:
    """Wire form of a view -> frame map, each frame as ``out.encoding`` says."""
    enc = out.encoding
    return {
        view: pack_image(image, enc.image_format, enc.jpeg_quality, out)
        for view, image in images.items()
    }


def unpack_views(d: Any, path: str, frames: FrameReader) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack_views`: a non-empty map of named ``uint8[H, W, 3]`` frames."""
    if not isinstance(d, dict) or not d:
        raise bad(path, f"expected a non-empty map view -> image, got {show(d)}")
    images = {}
    for view, image in d.items():
        if not isinstance(view, str) or not view:
            raise bad(path, f"view names must be non-empty strings, got {show(view)}")
        images[view] = unpack_image(image, f"{path}[{view!r}]", frames)
    return images


# ---------------------------------------------------------------- field codecs


@dataclass(frozen=True)
class Codec:
    """How one field travels: ``pack(value, writer)`` out, ``unpack(value, path, reader)`` in.

    The :class:`FrameWriter` and :class:`FrameReader` carry the message's data frames (and
    the encoding and limits) to the codecs that need them.
    """

    pack: Callable[[Any, FrameWriter], Any]
    unpack: Callable[[Any, str, FrameReader], Any]
    scalar: tuple[type, float, float] | None = None
    """For a plain number: its exact type and bounds; a value that fits needs no call."""


def _plain(value: Any, out: FrameWriter) -> Any:
    return value


ID = Codec(_plain, lambda v, p, rx: check_int(v, p), (int, 0, MAX_ID))
VERSION = Codec(_plain, lambda v, p, rx: check_int(v, p, low=-1), (int, -1, MAX_ID))
COUNT = Codec(_plain, lambda v, p, rx: check_int(v, p, low=0, high=2**20), (int, 0, 2**20))
POSITIVE = Codec(_plain, lambda v, p, rx: check_int(v, p, low=1, high=2**20), (int, 1, 2**20))
NAME = Codec(_plain, lambda v, p, rx: check_str(v, p))
TEXT = Codec(_plain, lambda v, p, rx: check_str(v, p, nonempty=False))
MICROS = Codec(_plain, lambda v, p, rx: check_float(v, p, low=0.0), (float, 0.0, math.inf))
UNIT = Codec(_plain, lambda v, p, rx: check_float(v, p, low=0.0, high=1.0), (float, 0.0, 1.0))


def check_names(value: Any, path: str) -> tuple[str, ...]:
    """A non-empty list of distinct non-empty names, as a tuple, else raise."""
    names = tuple(
        check_str(x, f"{path}[{i}]")
        for i, x in enumerate(check_type(value, path, list, "an array"))
    )
    if not names or len(set(names)) != len(names):
        raise bad(path, f"expected distinct names, at least one, got {show(list(names))}")
    return names


def check_hw(value: Any, path: str) -> tuple[int, int]:
    """``[height, width]`` of positive integers, as a tuple, else raise."""
    hw = check_type(value, path, list, "[height, width]")
    if len(hw) != 2:
        raise bad(path, f"expected [height, width], got {show(hw)}")
    return check_int(hw[0], f"{path}[0]", 1, 2**16), check_int(hw[1], f"{path}[1]", 1, 2**16)


NAMES = Codec(lambda v, out: list(v), lambda v, p, rx: check_names(v, p))
IMAGE_HW = Codec(lambda v, out: list(v), lambda v, p, rx: check_hw(v, p))
VIEWS = Codec(pack_views, unpack_views)
FRAMES = Codec(
    lambda v, out: [pack_views(f, out) for f in v],
    lambda v, p, rx: [
        unpack_views(f, f"{p}[{i}]", rx)
        for i, f in enumerate(check_type(v, p, list, "an array of frames"))
    ],
)
TENSORS = Codec(
    lambda v, out: {name: pack_array(a, out) for name, a in v.items()},
    lambda v, p, rx: {
        check_str(k, p): unpack_array(a, f"{p}[{k!r}]", frames=rx)
        for k, a in check_type(v, p, dict, "a map").items()
    },
)


def array_of(dtype: str, ndim: int) -> Codec:
    """An array field of one dtype and rank."""
    return Codec(pack_array, lambda v, p, rx: unpack_array(v, p, dtype=dtype, ndim=ndim, frames=rx))


def nested(cls: type) -> Codec:
    """A field holding a map of another wire dataclass (in replies: unknown keys are ignored)."""
    return Codec(
        lambda v, out: pack_fields(v, out),
        lambda v, p, rx: unpack_fields(cls, v, p, rx, strict=False),
    )


def wire(codec: Codec, default: Any = MISSING, optional: bool = False) -> Any:
    """Declare a dataclass field's codec; ``optional`` fields accept nil or absence (-> default)."""
    return field(
        default=default, metadata={"codec": codec, "optional": optional or default is not MISSING}
    )


@functools.cache
def _field_table(cls: type) -> tuple[tuple[str, Codec, bool, bool, Any, bool], ...]:
    """``(name, codec, optional, has_default, scalar, plain)`` per field, cached.

    ``fields()`` is slow per call; ``scalar`` and ``plain`` let the common fields skip calls.
    """
    return tuple(
        (
            f.name,
            f.metadata["codec"],
            f.metadata["optional"],
            f.default is not MISSING,
            f.metadata["codec"].scalar,
            f.metadata["codec"].pack is _plain,
        )
        for f in fields(cls)
    )


@functools.cache
def _field_names(cls: type, extra: frozenset) -> frozenset[str]:
    return frozenset(name for name, *_ in _field_table(cls)) | extra


def pack_fields(obj: Any, out: FrameWriter = _INLINE) -> dict[str, Any]:
    """A wire dataclass as a plain map (``None`` stays nil); bytes inline or in ``out``'s frames."""
    d = {}
    for name, codec, _, _, _, plain in _field_table(type(obj)):
        value = getattr(obj, name)
        d[name] = value if plain or value is None else codec.pack(value, out)
    return d


def unpack_fields(
    cls: type,
    d: Any,
    path: str,
    frames: FrameReader,
    *,
    strict: bool,
    extra: frozenset = frozenset(),
) -> Any:
    """Build ``cls`` from a map, checking every field; ``frames`` holds the data frames and limits.

    ``strict`` (requests) makes unknown keys errors, ``extra`` apart; otherwise (replies, so an
    older client reads a newer server) they are ignored.
    """
    if not isinstance(d, dict):
        raise bad(path or "message", f"expected a map, got {show(d)}")
    table = _field_table(cls)
    if strict:
        check_keys(d, path, _field_names(cls, extra))
    values = {}
    for name, codec, optional, has_default, scalar, _ in table:
        value = d.get(name)
        if scalar is not None and type(value) is scalar[0] and scalar[1] <= value <= scalar[2]:
            values[name] = value
            continue
        where = f"{path}.{name}" if path else name
        if value is None:
            if not optional:
                raise bad(where, "missing")
            if not has_default:
                values[name] = None  # optional without a default: nil
            continue  # else the dataclass default applies
        values[name] = codec.unpack(value, where, frames)
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if check is not None:
        check(path)
    return obj
