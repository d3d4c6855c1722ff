"""Bad input against a live server: every bad message gets an error, and the server keeps serving."""

from __future__ import annotations

import copy
import math

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving import (
    HW,
    STATE_DIM,
    VIEWS,
    critic_runner,
    frames,
    make_obs,
    policy_runner,
    running_server,
)

from limbic.runtime.protocol import PROTOCOL_VERSION, ActRequest, CriticRequest, decode, encode

MAX_BYTES = 64 * 1024
REQUEST_TYPES = {"hello", "heartbeat", "act", "critic"}
ALL_CODES = {"malformed", "version_mismatch", "unknown_type", "bad_field"}

_rng = np.random.default_rng(0)
INLINE = 2**62  # frame_min_bytes: every byte inside the msgpack map
VALID_ACT = msgpack.unpackb(encode(ActRequest(7, make_obs(_rng)), frame_min_bytes=INLINE)[0])
VALID_CRITIC = msgpack.unpackb(
    encode(CriticRequest(8, "stack", [frames(_rng), frames(_rng)]), frame_min_bytes=INLINE)[0]
)
FRAMED_ACT = encode(ActRequest(9, make_obs(_rng)), frame_min_bytes=0)  # state and images as frames


def pack(d) -> bytes:
    return msgpack.packb(d, use_bin_type=True)


def array(a: np.ndarray) -> dict:
    return {
        "dtype": a.dtype.name,
        "shape": list(a.shape),
        "data": a.astype(a.dtype.newbyteorder("<")).tobytes(),
    }


# Each strategy draws (payload: one frame or a list of frames, allowed error codes, the field
# the error must name or None).


def garbage(draw):
    return draw(st.binary(max_size=300)), ALL_CODES, None


def garbage_frames(draw):
    return draw(st.lists(st.binary(max_size=100), min_size=2, max_size=4)), ALL_CODES, None


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)


def random_structure(draw):
    value = draw(msgpack_values)
    if (
        isinstance(value, dict)
        and value.get("type") in REQUEST_TYPES
        and value.get("v") == PROTOCOL_VERSION
    ):
        value["type"] = (
            "not-a-request"  # a random map that happens to be a request is not bad input
        )
    return pack(value), ALL_CODES, None


def truncated_or_padded(draw):
    data = pack(VALID_ACT)
    if draw(st.booleans()):
        return data[: draw(st.integers(0, len(data) - 1))], {"malformed"}, None
    return data + draw(st.binary(min_size=1, max_size=20)), {"malformed"}, None


def mutated_act(draw):
    d = copy.deepcopy(VALID_ACT)
    obs = d["obs"]
    view = draw(st.sampled_from(VIEWS))
    kind = draw(
        st.sampled_from(
            [
                "version", "type", "id", "extra", "drop_obs_key", "state_dtype", "state_len", "state_nonfinite",
                "state_bytes", "drop_view", "image_shape", "image_dtype", "image_bytes", "jpeg_garbage",
                "step", "instruction", "timestamp", "view_not_a_map",
            ]
        )
    )  # fmt: skip
    if kind == "version":
        d["v"] = draw(st.integers(-(2**63), 2**63).filter(lambda v: v != PROTOCOL_VERSION))
        return pack(d), {"version_mismatch"}, "v"
    if kind == "type":
        d["type"] = draw(st.text(max_size=12).filter(lambda t: t not in REQUEST_TYPES))
        return pack(d), {"unknown_type"}, "type"
    if kind == "id":
        d["id"] = draw(st.sampled_from([-1, 2**63, True, "7", 1.5, None, [7]]))
        return pack(d), {"bad_field"}, "id"
    if kind == "extra":
        key = draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in d))
        d[key] = draw(msgpack_values)
        return pack(d), {"bad_field"}, key
    if kind == "drop_obs_key":
        key = draw(
            st.sampled_from(
                ["timestamp_ns", "images", "state", "instruction", "episode_id", "step"]
            )
        )
        del obs[key]
        return pack(d), {"bad_field"}, f"obs.{key}"
    if kind == "state_dtype":
        dtype = draw(st.sampled_from(["float64", "float16", "int32", "uint8", "bool", "int64"]))
        obs["state"] = array(np.zeros(STATE_DIM, dtype))
        return pack(d), {"bad_field"}, "obs.state"
    if kind == "state_len":
        n = draw(st.integers(0, 12).filter(lambda n: n != STATE_DIM))
        obs["state"] = array(np.zeros(n, np.float32))
        return pack(d), {"bad_field"}, "obs.state"
    if kind == "state_nonfinite":
        state = np.zeros(STATE_DIM, np.float32)
        i = draw(st.integers(0, STATE_DIM - 1))
        state[i] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        obs["state"] = array(state)
        return pack(d), {"bad_field"}, f"obs.state[{i}]"
    if kind == "state_bytes":
        obs["state"]["data"] = draw(
            st.binary(max_size=40).filter(lambda b: len(b) != 4 * STATE_DIM)
        )
        return pack(d), {"bad_field"}, "obs.state.data"
    if kind == "drop_view":
        del obs["images"][view], obs["frame_timestamps_ns"][view]
        return pack(d), {"bad_field"}, "obs.images"
    if kind == "image_shape":
        h, w = draw(st.tuples(st.integers(1, 40), st.integers(1, 40)).filter(lambda hw: hw != HW))
        obs["images"][view] = {"format": "raw", **array(np.zeros((h, w, 3), np.uint8))}
        return pack(d), {"bad_field"}, f"obs.images[{view!r}]"
    if kind == "image_dtype":
        dtype = draw(st.sampled_from(["float32", "uint16", "int8"]))
        obs["images"][view] = {"format": "raw", **array(np.zeros((*HW, 3), dtype))}
        return pack(d), {"bad_field"}, f"obs.images[{view!r}]"
    if kind == "image_bytes":
        obs["images"][view]["data"] = obs["images"][view]["data"][
            : draw(st.integers(0, HW[0] * HW[1] * 3 - 1))
        ]
        return pack(d), {"bad_field"}, f"obs.images[{view!r}].data"
    if kind == "jpeg_garbage":
        obs["images"][view] = {"format": "jpeg", "data": draw(st.binary(max_size=200))}
        return pack(d), {"bad_field"}, f"obs.images[{view!r}]"
    if kind == "step":
        obs["step"] = draw(st.sampled_from([-1, -(2**40), 0.5, "3", None, False]))
        return pack(d), {"bad_field"}, "obs.step"
    if kind == "instruction":
        obs["instruction"] = draw(st.sampled_from(["", "   ", 3, None, b"pick"]))
        return pack(d), {"bad_field"}, "obs.instruction"
    if kind == "timestamp":
        obs["timestamp_ns"] = draw(st.sampled_from([-5, 1.0, "now", None]))
        return pack(d), {"bad_field"}, "obs.timestamp_ns"
    obs["images"][view] = draw(st.sampled_from([b"\0" * 10, 5, [1, 2], None]))
    return pack(d), {"bad_field"}, f"obs.images[{view!r}]"


def mutated_critic(draw):
    d = copy.deepcopy(VALID_CRITIC)
    kind = draw(st.sampled_from(["one_frame", "phi0", "frame_view", "goal"]))
    if kind == "one_frame":
        d["frames"] = d["frames"][: draw(st.integers(0, 1))]
        return pack(d), {"bad_field"}, "frames"
    if kind == "phi0":
        d["phi0"] = draw(st.sampled_from([-0.1, 1.01, math.nan, math.inf, "0.5"]))
        return pack(d), {"bad_field"}, "phi0"
    if kind == "frame_view":
        i = draw(st.integers(0, 1))
        del d["frames"][i][draw(st.sampled_from(VIEWS))]
        return pack(d), {"bad_field"}, f"frames[{i}]"
    d["goal"] = {"front": d["frames"][0]["front"]}
    return pack(d), {"bad_field"}, "goal"


def mutated_frames(draw):
    d = msgpack.unpackb(FRAMED_ACT[0])
    data = [bytes(f) for f in FRAMED_ACT[1:]]
    where = draw(st.sampled_from([("images", "front"), ("images", "wrist"), ("state",)]))
    target = d["obs"]
    for key in where:
        target = target[key]
    field = "obs." + where[0] + "".join(f"[{k!r}]" for k in where[1:])
    kind = draw(st.sampled_from(["number", "taken", "size", "both", "stray", "missing"]))
    if kind == "number":
        target["frame"] = draw(
            st.sampled_from([0, -1, len(data) + 1, 2**40, True, "1", 1.0, [1], b"\x01"])
        )
        return [pack(d), *data], {"bad_field"}, f"{field}.frame"
    if kind == "taken":  # fields claim frames in order: front (1), wrist (2), state (3)
        if where == ("images", "front"):
            target["frame"] = 2
            return [pack(d), *data], {"bad_field"}, "obs.images['wrist'].frame"
        target["frame"] = 1
        return [pack(d), *data], {"bad_field"}, f"{field}.frame"
    if kind == "size":
        i = target["frame"] - 1
        data[i] = data[i][: draw(st.integers(0, len(data[i]) - 1))]
        return [pack(d), *data], {"bad_field"}, f"{field}.frame"
    if kind == "both":
        target["data"] = data[target["frame"] - 1]
        return [pack(d), *data], {"bad_field"}, field
    if kind == "stray":
        extra = draw(st.lists(st.binary(max_size=50), min_size=1, max_size=3))
        return [pack(d), *data, *extra], {"malformed"}, None
    del data[draw(st.integers(0, len(data) - 1))]  # a frame missing: a reference out of range
    return [pack(d), *data], {"bad_field"}, None


@st.composite
def bad_message(draw):
    make = draw(
        st.sampled_from(
            [
                garbage,
                garbage_frames,
                random_structure,
                truncated_or_padded,
                mutated_act,
                mutated_act,
                mutated_critic,
                mutated_frames,
            ]
        )
    )
    return make(draw)


@pytest.fixture(scope="module")
def server():
    with running_server(policy_runner(), critic_runner(), max_message_bytes=MAX_BYTES) as s:
        yield s


def dealer(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def answered(sock: zmq.Socket, payload: bytes | list[bytes]) -> dict:
    sock.send_multipart(payload if isinstance(payload, list) else [payload])
    assert sock.poll(10_000), "no reply: the server stopped answering"
    # A request starting with an empty frame reads as a REQ's: the reply echoes that delimiter.
    *delimiter, reply = sock.recv_multipart()
    assert delimiter in ([], [b""]), delimiter
    return msgpack.unpackb(reply, raw=False)


def assert_still_serves(sock: zmq.Socket, request_id: int = 99) -> None:
    d = copy.deepcopy(VALID_ACT)
    d["id"] = request_id
    reply = answered(sock, pack(d))
    assert reply["type"] == "act_reply" and reply["id"] == request_id, reply
    assert decode(pack(reply)).actions.shape == (4, 3)


def test_a_thousand_generated_bad_messages_each_get_an_error(server):
    sock = dealer(server.endpoint)
    sent = []
    errors_before = server.stats()["errors"]

    @settings(
        max_examples=1000,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(bad_message())
    def throw(case):
        payload, codes, field = case
        reply = answered(sock, payload)
        assert reply["type"] == "error", reply
        assert reply["code"] in codes, (reply, codes)
        if field is not None:
            header = payload[0] if isinstance(payload, list) else payload
            assert reply["field"] == field, reply
            assert (
                reply["id"] == msgpack.unpackb(header, raw=False).get("id") or reply["id"] is None
            )
        assert reply["message"]
        sent.append(payload)

    try:
        throw()
        assert len(sent) >= 1000
        assert server.stats()["errors"] - errors_before == len(sent)
        assert_still_serves(sock)
    finally:
        sock.close(0)


def test_oversized_frames_drop_the_connection_and_the_client_is_served_after(server):
    sock = dealer(server.endpoint)
    try:
        assert_still_serves(sock, 1)
        sock.send(b"\x00" * (MAX_BYTES + 1))  # ZeroMQ disconnects the peer: no reply
        assert not sock.poll(300)
        assert_still_serves(sock, 2)  # the DEALER reconnected by itself
    finally:
        sock.close(0)


def test_requests_over_the_size_limit_in_several_frames_get_an_error(server):
    sock = dealer(server.endpoint)
    try:
        header = msgpack.unpackb(FRAMED_ACT[0])
        frames = [bytes(f) for f in FRAMED_ACT[1:]]
        frames[0] = frames[0] * (MAX_BYTES // len(frames[0]))  # each frame under the limit
        reply = answered(sock, [pack(header), *frames])
        assert reply["code"] == "malformed" and f"exceeds {MAX_BYTES}" in reply["message"]
        assert_still_serves(sock, 5)  # the same connection: nothing was dropped
    finally:
        sock.close(0)


def test_multi_frame_junk_gets_an_error_and_req_sockets_work(server):
    sock = dealer(server.endpoint)
    req = zmq.Context.instance().socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(server.endpoint)
    try:
        assert answered(sock, [b"junk", b"more", b"frames"])["code"] == "malformed"
        assert_still_serves(sock, 3)
        assert_still_serves(req, 4)  # REQ adds an empty delimiter frame; the reply echoes it
        req.send_multipart([bytes(f) for f in FRAMED_ACT])  # a framed request through REQ
        assert req.poll(10_000)
        assert msgpack.unpackb(req.recv())["type"] == "act_reply"
    finally:
        sock.close(0)
        req.close(0)


def test_a_version_1_client_is_told_which_version_to_speak(server):
    sock = dealer(server.endpoint)
    try:
        reply = answered(sock, pack({**VALID_ACT, "v": 1}))  # v1: one frame, bytes inline
        assert reply["code"] == "version_mismatch" and reply["field"] == "v"
        assert (
            f"version 1 is not supported; this side speaks {PROTOCOL_VERSION}" in reply["message"]
        )
        assert reply["id"] == VALID_ACT["id"]
    finally:
        sock.close(0)
