"""Direct readers for the two messages on every control tick: ``act`` and ``act_reply``.

The general decoder (:func:`limbic.runtime.protocol.decode`) walks the schema field by field
through the codecs, which costs dozens of Python calls per message, and far more time than
its instructions suggest when a process wakes with cold caches after waiting for a model.
These readers check the same rules in one pass each, for the well-formed common case only
(raw images, float timings): on anything else, valid or not, they return ``None`` and the
general decoder runs, so every error is still reported by the one decoder that names fields.
They must never accept what the general decoder refuses; ``tests/test_protocol.py`` checks
that both agree on valid and broken messages.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from limbic.contracts import ContractError, Observation
from limbic.runtime.codec import DTYPES, MAX_ID, Limits
from limbic.runtime.protocol import ActReply, ActRequest, Timings

_ACT_KEYS = frozenset({"v", "type", "id", "obs", "timeout_ms"})
_OBS_KEYS = frozenset(
    {"timestamp_ns", "images", "frame_timestamps_ns", "state", "instruction", "episode_id"}
    | {"step"}
)
_ARRAY_KEYS = frozenset({"dtype", "shape", "data", "frame"})
_RAW_IMAGE_KEYS = _ARRAY_KEYS | {"format"}
_MICROS = ("queue_us", "decode_us", "assemble_us", "infer_us", "encode_us")


def _is_id(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_ID


def _array(
    m: Any, keys: frozenset, dtype: str, ndim: int, frames: list, taken: list[bool]
) -> np.ndarray | None:
    """An array map of ``dtype`` and rank ``ndim`` whose bytes are inline or an untaken frame."""
    if type(m) is not dict or not m.keys() <= keys or m.get("dtype") != dtype:
        return None
    shape = m.get("shape")
    if type(shape) is not list or len(shape) != ndim:
        return None
    size = DTYPES[dtype].itemsize
    for n in shape:
        if type(n) is not int or n < 0:
            return None
        size *= n
    number, data = m.get("frame"), m.get("data")
    if number is None:
        if type(data) is not bytes:
            return None
    elif data is not None or type(number) is not int or not 0 < number <= len(frames):
        return None
    elif taken[number - 1]:
        return None
    else:
        taken[number - 1] = True
        data = frames[number - 1]
    if len(data) != size:
        return None
    return np.frombuffer(data, dtype=DTYPES[dtype]).reshape(shape)


def read_act(d: dict[str, Any], frames: list, limits: Limits) -> Any:
    """An :class:`~limbic.runtime.protocol.ActRequest` with raw images, or None."""
    if not d.keys() <= _ACT_KEYS:
        return None
    request_id, obs, timeout_ms = d.get("id"), d.get("obs"), d.get("timeout_ms")
    if not _is_id(request_id) or not (timeout_ms is None or _is_id(timeout_ms)):
        return None
    if type(obs) is not dict or not obs.keys() <= _OBS_KEYS:
        return None
    taken = [False] * len(frames)
    images, views = {}, obs.get("images")
    if type(views) is not dict or not views:
        return None
    for view, m in views.items():
        if type(view) is not str or not view or type(m) is not dict or m.get("format") != "raw":
            return None
        image = _array(m, _RAW_IMAGE_KEYS, "uint8", 3, frames, taken)
        if image is None or image.shape[2] != 3:
            return None
        if image.shape[0] * image.shape[1] > limits.max_image_pixels:
            return None
        images[view] = image
    state = _array(obs.get("state"), _ARRAY_KEYS, "float32", 1, frames, taken)
    stamp, step = obs.get("timestamp_ns"), obs.get("step")
    instruction, episode_id = obs.get("instruction"), obs.get("episode_id")
    frame_stamps = obs.get("frame_timestamps_ns") or {}
    if (
        state is None
        or not all(taken)
        or not (_is_id(stamp) and _is_id(step) and type(frame_stamps) is dict)
        or not (type(instruction) is str and instruction.strip())
        or not (type(episode_id) is str and episode_id.strip())
    ):
        return None
    observation = Observation(stamp, images, state, instruction, episode_id, step, frame_stamps)
    try:
        observation.validate()
    except ContractError:
        return None
    return ActRequest(request_id, observation, timeout_ms)


def read_act_reply(d: dict[str, Any], frames: list, limits: Limits) -> Any:
    """An :class:`~limbic.runtime.protocol.ActReply` (unknown keys ignored, as replies are read), or None."""
    request_id, version, timings = d.get("id"), d.get("policy_version"), d.get("timings")
    if not _is_id(request_id) or not (type(version) is int and -1 <= version <= MAX_ID):
        return None
    if type(timings) is not dict:
        return None
    taken = [False] * len(frames)
    actions = _array(d.get("actions"), _ARRAY_KEYS, "float32", 2, frames, taken)
    if actions is None or not all(taken):
        return None
    fields = {}
    for name in _MICROS:
        value = timings.get(name)
        if value is not None:
            if type(value) is not float or not value >= 0.0:  # also refuses NaN
                return None
            fields[name] = value
    batch_size = timings.get("batch_size")
    if batch_size is not None:
        if type(batch_size) is not int or not 0 <= batch_size <= 2**20:
            return None
        fields["batch_size"] = batch_size
    return ActReply(request_id, actions, version, Timings(**fields))


READERS = {"act": read_act, "act_reply": read_act_reply}
"""Fast readers by message type."""
