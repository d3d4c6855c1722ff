"""How values travel on the wire and are checked on the way in: the protocol's building blocks.

Arrays are ``{"dtype", "shape", "data"}`` maps with little-endian C-order bytes; camera
frames are raw uint8 arrays or JPEG; scalars are checked for type and range (a bool never
passes for a number). A :class:`Codec` pairs how one dataclass field is packed with how it is
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
        super().__init__(f"[{self.code.value}] {field_name + ': ' if field_name else ''}{problem}")


@dataclass(frozen=True)
class Limits:
    """Bounds for decoding one message; anything larger is rejected before it is built."""

    max_message_bytes: int = 16 * 2**20
    max_str_len: int = 4096
    max_array_len: int = 1024
    max_map_len: int = 256
    max_image_pixels: int = 4096 * 4096


@dataclass(frozen=True)
class Encoding:
    """How a sender packs camera frames: ``raw`` or ``jpeg`` at ``jpeg_quality``."""

    image_format: str = "raw"
    jpeg_quality: int = 90


def show(value: Any) -> str:
    """A short repr of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def bad(path: str, problem: str) -> ProtocolError:
    """The ``bad_field`` error for ``path``."""
    return ProtocolError(ErrorCode.BAD_FIELD, path, problem)


def check_keys(d: dict[str, Any], path: str, allowed: set[str]) -> None:
    """Raise naming the first key of ``d`` that is not a string in ``allowed``."""
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
    check_type(value, path, int, "an integer")
    if not low <= value <= high:
        raise bad(path, f"expected an integer in [{low}, {high}], got {value}")
    return value


def check_str(value: Any, path: str, nonempty: bool = True) -> str:
    """A string (with a non-blank character unless ``nonempty`` is false), else raise."""
    check_type(value, path, str, "a string")
    if nonempty and not value.strip():
        raise bad(path, "expected a non-empty string")
    return value


def check_float(value: Any, path: str, low: float = -math.inf, high: float = math.inf) -> float:
    """A finite number in ``[low, high]`` (not a bool), as float, else raise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(path, f"expected a number, got {type(value).__name__} {show(value)}")
    if not low <= value <= high:  # also rejects NaN
        raise bad(path, f"expected a number in [{low}, {high}], got {value}")
    return float(value)


# ---------------------------------------------------------------- arrays and images


def pack_array(array: np.ndarray) -> dict[str, Any]:
    """Wire form of a numpy array: ``{"dtype", "shape", "data"}``, little-endian C order."""
    array = np.asarray(array)
    name = array.dtype.name
    if name not in DTYPES:
        raise ContractError(
            "array", f"dtype {array.dtype} cannot travel; use one of {sorted(DTYPES)}"
        )
    array = np.asarray(array, dtype=DTYPES[name])  # (ascontiguousarray would make 0-d arrays 1-d)
    if not array.flags.c_contiguous:
        array = array.copy(order="C")
    # A memoryview lets msgpack copy the bytes once, straight into its output buffer.
    data = memoryview(array.reshape(-1)).cast("B") if array.size else b""
    return {"dtype": name, "shape": list(array.shape), "data": data}


def unpack_array(
    d: Any, path: str, *, dtype: str | None = None, ndim: int | None = None
) -> np.ndarray:
    """Inverse of :func:`pack_array`; checks dtype, shape and byte count before viewing the data."""
    if not isinstance(d, dict):
        raise bad(path, f"expected an array map {{dtype, shape, data}}, got {type(d).__name__}")
    check_keys(d, path, {"dtype", "shape", "data"})
    for key in ("dtype", "shape", "data"):
        if key not in d:
            raise bad(f"{path}.{key}", "missing")
    name = d["dtype"]
    if not isinstance(name, str) or name not in DTYPES:
        raise bad(f"{path}.dtype", f"expected one of {sorted(DTYPES)}, got {show(name)}")
    if dtype is not None and name != dtype:
        raise bad(path, f"expected dtype {dtype}, got {name}")
    shape = d["shape"]
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in shape)
    ):
        raise bad(
            f"{path}.shape",
            f"expected at most {MAX_NDIM} non-negative integers, got {show(shape)}",
        )
    if ndim is not None and len(shape) != ndim:
        raise bad(path, f"expected {ndim} dimension(s), got shape {shape}")
    data = check_type(d["data"], f"{path}.data", bytes, "binary")
    expected = math.prod(shape) * DTYPES[name].itemsize
    if len(data) != expected:
        raise bad(
            f"{path}.data", f"shape {shape} of {name} needs {expected} bytes, got {len(data)}"
        )
    return np.frombuffer(data, dtype=DTYPES[name]).reshape(shape)


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
        raise bad(path, f"expected an image map with a 'format' key, got {type(d).__name__}")
    fmt = d.get("format")
    if fmt == "raw":
        image = unpack_array(
            {k: v for k, v in d.items() if k != "format"}, path, dtype="uint8", ndim=3
        )
        if image.shape[2] != 3:
            raise bad(path, f"expected shape [H, W, 3], got {list(image.shape)}")
    elif fmt == "jpeg":
        check_keys(d, path, {"format", "data"})
        from limbic.runtime import jpeg

        data = check_type(d.get("data"), f"{path}.data", bytes, "binary")
        image = jpeg.decode(data, path, limits.max_image_pixels)
    else:
        raise bad(f"{path}.format", f"expected one of {list(IMAGE_FORMATS)}, got {show(fmt)}")
    if image.shape[0] * image.shape[1] > limits.max_image_pixels:
        raise bad(
            path, f"{image.shape[0]}x{image.shape[1]} exceeds {limits.max_image_pixels} pixels"
        )
    return image


def pack_views(images: dict[str, np.ndarray], enc: Encoding) -> dict[str, Any]:
    """Wire form of a view -> frame map."""
    return {
        view: pack_image(image, enc.image_format, enc.jpeg_quality)
        for view, image in images.items()
    }


def unpack_views(d: Any, path: str, limits: Limits) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack_views`: a non-empty map of named ``uint8[H, W, 3]`` frames."""
    if not isinstance(d, dict) or not d:
        raise bad(path, f"expected a non-empty map view -> image, got {show(d)}")
    out = {}
    for view, image in d.items():
        if not isinstance(view, str) or not view:
            raise bad(path, f"view names must be non-empty strings, got {show(view)}")
        out[view] = unpack_image(image, f"{path}[{view!r}]", limits)
    return out


# ---------------------------------------------------------------- field codecs


@dataclass(frozen=True)
class Codec:
    """How one field travels: ``pack(value, encoding)`` out, ``unpack(value, path, limits)`` in."""

    pack: Callable[[Any, Encoding], Any]
    unpack: Callable[[Any, str, Limits], Any]


def _plain(value: Any, enc: Encoding) -> Any:
    return value


ID = Codec(_plain, lambda v, p, lim: check_int(v, p))
VERSION = Codec(_plain, lambda v, p, lim: check_int(v, p, low=-1))
COUNT = Codec(_plain, lambda v, p, lim: check_int(v, p, low=0, high=2**20))
POSITIVE = Codec(_plain, lambda v, p, lim: check_int(v, p, low=1, high=2**20))
NAME = Codec(_plain, lambda v, p, lim: check_str(v, p))
TEXT = Codec(_plain, lambda v, p, lim: check_str(v, p, nonempty=False))
MICROS = Codec(_plain, lambda v, p, lim: check_float(v, p, low=0.0))
UNIT = Codec(_plain, lambda v, p, lim: check_float(v, p, low=0.0, high=1.0))


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


NAMES = Codec(lambda v, enc: list(v), lambda v, p, lim: check_names(v, p))
IMAGE_HW = Codec(lambda v, enc: list(v), lambda v, p, lim: check_hw(v, p))
VIEWS = Codec(pack_views, unpack_views)
FRAMES = Codec(
    lambda v, enc: [pack_views(f, enc) for f in v],
    lambda v, p, lim: [
        unpack_views(f, f"{p}[{i}]", lim)
        for i, f in enumerate(check_type(v, p, list, "an array of frames"))
    ],
)
TENSORS = Codec(
    lambda v, enc: {name: pack_array(a) for name, a in v.items()},
    lambda v, p, lim: {
        check_str(k, p): unpack_array(a, f"{p}[{k!r}]")
        for k, a in check_type(v, p, dict, "a map").items()
    },
)


def array_of(dtype: str, ndim: int) -> Codec:
    """An array field of one dtype and rank."""
    return Codec(
        lambda v, enc: pack_array(v), lambda v, p, lim: unpack_array(v, p, dtype=dtype, ndim=ndim)
    )


def nested(cls: type) -> Codec:
    """A field holding a map of another wire dataclass (in replies: unknown keys are ignored)."""
    return Codec(
        lambda v, enc: pack_fields(v, enc),
        lambda v, p, lim: unpack_fields(cls, v, p, lim, strict=False),
    )


def wire(codec: Codec, default: Any = MISSING, optional: bool = False) -> Any:
    """Declare a dataclass field's codec; ``optional`` fields accept nil or absence (-> default)."""
    return field(
        default=default, metadata={"codec": codec, "optional": optional or default is not MISSING}
    )


@functools.cache
def _field_table(cls: type) -> tuple[tuple[str, Codec, bool, bool], ...]:
    """``(name, codec, optional, has_default)`` per field; cached, as ``fields()`` is slow per call."""
    return tuple(
        (f.name, f.metadata["codec"], f.metadata["optional"], f.default is not MISSING)
        for f in fields(cls)
    )


def pack_fields(obj: Any, enc: Encoding | None = None) -> dict[str, Any]:
    """A wire dataclass as a plain map (``None`` stays nil); frames packed as ``enc`` says."""
    enc = enc or Encoding()
    out = {}
    for name, codec, _, _ in _field_table(type(obj)):
        value = getattr(obj, name)
        out[name] = None if value is None else codec.pack(value, enc)
    return out


def unpack_fields(
    cls: type, d: Any, path: str, limits: Limits, *, strict: bool, extra: frozenset = frozenset()
) -> Any:
    """Build ``cls`` from a map, checking every field.

    ``strict`` (requests) makes unknown keys errors, ``extra`` apart; otherwise (replies, so an
    older client reads a newer server) they are ignored.
    """
    if not isinstance(d, dict):
        raise bad(path or "message", f"expected a map, got {show(d)}")
    table = _field_table(cls)
    if strict:
        check_keys(d, path, {name for name, *_ in table} | extra)
    values = {}
    for name, codec, optional, has_default in table:
        where = f"{path}.{name}" if path else name
        value = d.get(name)
        if value is None:
            if not optional:
                raise bad(where, "missing")
            if not has_default:
                values[name] = None  # optional without a default: nil
            continue  # else the dataclass default applies
        values[name] = codec.unpack(value, where, limits)
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if check is not None:
        check(path)
    return obj
