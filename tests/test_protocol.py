"""The wire schema on its own: round trips, strict decoding, errors that name the field."""

from __future__ import annotations

import io

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from serving import HW, VIEWS, frames, make_obs, small_critic, small_policy

from limbic.runtime import _value, protocol
from limbic.runtime.protocol import (
    ActReply,
    ActRequest,
    CriticReply,
    CriticRequest,
    ErrorCode,
    ErrorReply,
    Heartbeat,
    Hello,
    Limits,
    PolicySpec,
    ProtocolError,
    ServerInfo,
    Timings,
    WeightsAck,
    WeightsUpdate,
    decode,
    encode,
)
from limbic.runtime.servable import (
    CachedInstructionEncoder,
    HashInstructionEncoder,
    ServableError,
    critic_spec,
    policy_spec,
)


def raw_map(message: object, **encoding) -> dict:
    """The message as one msgpack map, every byte inline (no data frames)."""
    (header,) = encode(message, frame_min_bytes=2**62, **encoding)
    return msgpack.unpackb(header, raw=False)


def repack(d: dict) -> bytes:
    return msgpack.packb(d, use_bin_type=True)


def expect(
    data: bytes, code: ErrorCode, field: str | None = None, limits: Limits | None = None
) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(data, limits)
    assert info.value.code == code, info.value
    if field is not None:
        assert info.value.field == field, info.value
    return info.value


@pytest.mark.parametrize("name", sorted(protocol.DTYPES))
def test_arrays_round_trip_every_dtype(name):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3, 2, 4)) * 100).astype(name)
    b = protocol.unpack_array(
        msgpack.unpackb(msgpack.packb(protocol.pack_array(a)), raw=False), "x"
    )
    assert b.dtype == np.dtype(name) and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


def test_big_endian_and_strided_arrays_travel_as_little_endian_c_order():
    a = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    d = protocol.pack_array(a)
    assert d["dtype"] == "float32" and bytes(d["data"]) == np.ascontiguousarray(a, "<f4").tobytes()


def test_every_message_round_trips():
    rng = np.random.default_rng(1)
    obs = make_obs(rng)
    timings = Timings(1.0, 2.0, 3.0, 4.0, 5.0, 6)
    spec = policy_spec(small_policy())
    window = [frames(rng) for _ in range(3)]
    messages = [
        Hello(1, "arm-0"),
        ServerInfo(
            2, "srv", 1 << 20, 1000, 10000, spec, critic_spec(small_critic()), 3, 4, "torch"
        ),
        Heartbeat(3, 123, 0, -1),
        ActReply(5, rng.standard_normal((4, 3)).astype(np.float32), 7, timings),
        CriticRequest(6, "stack", window, window[-1], 0.25, 90),
        CriticReply(7, *(rng.random(2).astype(np.float32) for _ in range(3)), 2, timings),
        ErrorReply(8, ErrorCode.BAD_FIELD, "obs.state: bad", "obs.state"),
        ErrorReply(None, ErrorCode.MALFORMED, "garbage"),
        WeightsUpdate(9, "policy", 3, {"w": rng.standard_normal((2, 2)).astype(np.float32)}),
        WeightsAck(10, "critic", 4),
    ]
    for message in messages:
        back = decode(encode(message))
        assert type(back) is type(message)
        for key, value in vars(message).items():
            got = getattr(back, key)
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(got, value)
            elif key in ("frames", "goal", "tensors"):
                items = value if isinstance(value, list) else [value]
                for a, b in zip(items, got if isinstance(got, list) else [got], strict=True):
                    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
            else:
                assert got == value, key
    back = decode(encode(ActRequest(4, obs, 50)))
    assert back.timeout_ms == 50 and back.obs.instruction == obs.instruction
    assert back.obs.frame_timestamps_ns == obs.frame_timestamps_ns
    np.testing.assert_array_equal(back.obs.state, obs.state)
    for view in VIEWS:
        np.testing.assert_array_equal(back.obs.images[view], obs.images[view])


def test_jpeg_frames_decode_close_to_the_original():
    y, x = np.mgrid[0 : HW[0], 0 : HW[1]]
    smooth = np.stack([x * 7, y * 9, (x + y) * 3], axis=-1).astype(np.uint8)
    obs = make_obs(np.random.default_rng(2))
    obs.images = {v: smooth for v in VIEWS}
    wire = raw_map(ActRequest(1, obs), image_format="jpeg", jpeg_quality=95)
    assert wire["obs"]["images"]["front"]["format"] == "jpeg"
    back = decode(repack(wire)).obs.images["front"]
    assert back.shape == smooth.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - smooth).mean() < 3


def valid_act() -> dict:
    return raw_map(ActRequest(11, make_obs(np.random.default_rng(3))))


def test_garbage_and_non_maps_are_malformed():
    expect(b"\xc1\xff\x00garbage", ErrorCode.MALFORMED)
    expect(repack([1, 2, 3]), ErrorCode.MALFORMED)
    hello = {"v": protocol.PROTOCOL_VERSION, "type": "hello", "id": 1}
    expect(repack(hello) + b"\x00", ErrorCode.MALFORMED)  # trailing bytes
    expect(b"\x91" * 5000 + b"\xc0", ErrorCode.MALFORMED)  # nesting bomb
    expect(
        msgpack.packb({**hello, "t": msgpack.ExtType(5, b"x")}),
        ErrorCode.MALFORMED,
    )
    expect(b"\x81\xa1v\xd6\xff\x00\x00\x00\x00", ErrorCode.MALFORMED)  # msgpack timestamp ext
    expect(repack(hello), ErrorCode.MALFORMED, limits=Limits(max_message_bytes=4))


def test_versions_and_types_are_checked_first():
    d = valid_act()
    assert expect(repack({**d, "v": 0}), ErrorCode.VERSION_MISMATCH, "v").request_id == 11
    expect(repack({**d, "v": "1"}), ErrorCode.MALFORMED, "v")
    expect(repack({**d, "v": True}), ErrorCode.MALFORMED, "v")
    expect(repack({**d, "type": "fly"}), ErrorCode.UNKNOWN_TYPE, "type")
    with pytest.raises(ProtocolError) as info:
        decode(repack(d), accept=("hello",))
    assert info.value.code == ErrorCode.UNKNOWN_TYPE


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("obs"), "obs"),
        (lambda d: d.update(id=-1), "id"),
        (lambda d: d.update(id=True), "id"),
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d["obs"].pop("state"), "obs.state"),
        (lambda d: d["obs"].update(step=1.5), "obs.step"),
        (lambda d: d["obs"].update(instruction="  "), "obs.instruction"),
        (lambda d: d["obs"].update(images={}), "obs.images"),
        (lambda d: d["obs"]["state"].update(dtype="float64", data=b"\0" * 40), "obs.state"),
        (lambda d: d["obs"]["state"].update(dtype="complex64"), "obs.state.dtype"),
        (lambda d: d["obs"]["state"].update(data=b"\0" * 3), "obs.state.data"),
        (lambda d: d["obs"]["state"].update(shape=[5, 1]), "obs.state"),
        (lambda d: d["obs"]["state"].update(shape=[-5]), "obs.state.shape"),
        (
            lambda d: d["obs"]["state"].update(
                data=np.array([1, np.nan, 0, 0, 0], "<f4").tobytes()
            ),
            "obs.state[1]",
        ),
        (
            lambda d: d["obs"]["state"].update(
                data=np.array([1, 0, 0, np.inf, 0], "<f4").tobytes()
            ),
            "obs.state[3]",
        ),
        (
            lambda d: d["obs"]["images"]["front"].update(
                dtype="float32", data=b"\0" * (4 * 24 * 32 * 3)
            ),
            "obs.images['front']",
        ),
        (
            lambda d: d["obs"]["images"]["front"].update(
                shape=[24, 32, 4], data=b"\0" * (24 * 32 * 4)
            ),
            "obs.images['front']",
        ),
        (lambda d: d["obs"]["images"]["front"].update(format="png"), "obs.images['front'].format"),
        (
            lambda d: d["obs"]["images"].update(wrist={"format": "jpeg", "data": b"not a jpeg"}),
            "obs.images['wrist']",
        ),
        (lambda d: d["obs"]["images"].update(wrist=b"raw bytes"), "obs.images['wrist']"),
        (lambda d: d["obs"].update(frame_timestamps_ns={"side": 1}), "obs.frame_timestamps_ns"),
    ],
)
def test_bad_fields_are_named(mutate, field):
    d = valid_act()
    mutate(d)
    error = expect(repack(d), ErrorCode.BAD_FIELD, field)
    assert str(error).startswith("[bad_field]") and (d.get("id") != 11 or error.request_id == 11)


def test_jpeg_bombs_and_non_rgb_jpegs_are_refused_before_decoding():
    limits = Limits(max_image_pixels=HW[0] * HW[1])
    big = io.BytesIO()
    Image.new("RGB", (HW[1] * 2, HW[0] * 2)).save(big, format="JPEG")
    gray = io.BytesIO()
    Image.new("L", (HW[1], HW[0])).save(gray, format="JPEG")
    for data, words in ((big.getvalue(), "exceeds"), (gray.getvalue(), "RGB")):
        d = valid_act()
        d["obs"]["images"]["front"] = {"format": "jpeg", "data": data}
        assert words in str(expect(repack(d), ErrorCode.BAD_FIELD, "obs.images['front']", limits))
    truncated = io.BytesIO()
    Image.new("RGB", (HW[1], HW[0]), "red").save(truncated, format="JPEG")
    d = valid_act()
    d["obs"]["images"]["front"] = {"format": "jpeg", "data": truncated.getvalue()[:-200]}
    expect(repack(d), ErrorCode.BAD_FIELD, "obs.images['front']")


def test_critic_requests_are_checked():
    rng = np.random.default_rng(4)
    d = raw_map(CriticRequest(3, "stack", [frames(rng), frames(rng)]))
    assert decode(repack(d)).phi0 == 0.0
    expect(repack({**d, "frames": d["frames"][:1]}), ErrorCode.BAD_FIELD, "frames")
    expect(repack({**d, "phi0": float("nan")}), ErrorCode.BAD_FIELD, "phi0")
    expect(repack({**d, "phi0": 1.5}), ErrorCode.BAD_FIELD, "phi0")
    bad = {
        **d,
        "frames": [
            d["frames"][0],
            {"front": {"format": "raw", "dtype": "uint8", "shape": [1], "data": b"\0"}},
        ],
    }
    expect(repack(bad), ErrorCode.BAD_FIELD, "frames[1]['front']")


def test_specs_come_from_module_attributes():
    spec = policy_spec(small_policy())
    assert spec == PolicySpec(VIEWS, HW, 5, 3, 4, 16)
    assert PolicySpec.from_dict(spec.to_dict()) == spec
    module = small_policy()
    del module.chunk_len
    with pytest.raises(ServableError, match="chunk_len"):
        policy_spec(module)


def test_instruction_embeddings_are_deterministic_normalised_and_cached():
    enc = HashInstructionEncoder(16)
    a, b, c = enc.encode(["Pick  the cube", "pick the cube", "open the drawer"])
    np.testing.assert_array_equal(a, b)
    assert abs(np.linalg.norm(a) - 1) < 1e-5 and abs(float(a @ c)) < 0.9
    np.testing.assert_array_equal(HashInstructionEncoder(16).encode(["pick the cube"])[0], a)
    cached = CachedInstructionEncoder(enc, max_entries=2)
    out = cached.encode(["x", "y", "x", "X"])
    assert cached.misses == 2 and np.array_equal(out[0], out[3])
    cached.encode(["x", "z"])
    assert cached.misses == 3
    cached.encode(["y"])  # evicted by z (least recently used)
    assert cached.misses == 4


def test_value_rule_and_fusion():
    np.testing.assert_allclose(_value.inverse_progress(0.2, 0.5), 0.6)
    np.testing.assert_allclose(_value.inverse_progress(0.6, -0.5), 0.3)
    inc = np.array([0.5, 0.5, -0.5])
    fwd = np.array([0.5, 0.75, 0.4])
    chain = [0.5, 0.75, 0.375]
    np.testing.assert_allclose(_value.fused_value(inc, fwd), (np.array(chain) + fwd) / 2, rtol=1e-6)
    bwd = np.array([-0.5, -0.25, -0.7])
    expected = (np.array(chain) + fwd + 1 + bwd) / 3
    np.testing.assert_allclose(_value.fused_value(inc, fwd, bwd), expected, rtol=1e-6)
    # from phi0 = 0.5, progress 0.5 -> 0.75 on both chains
    np.testing.assert_allclose(_value.fused_value([0.5], [0.5], phi0=0.5), [0.75])


def test_jpegs_from_other_encoders_decode_the_same():
    from limbic.runtime import jpeg

    y, x = np.mgrid[0 : HW[0], 0 : HW[1]]
    smooth = np.stack([x * 7, y * 9, (x + y) * 3], axis=-1).astype(np.uint8)
    for progressive in (False, True):
        out = io.BytesIO()
        Image.fromarray(smooth).save(out, format="JPEG", quality=95, progressive=progressive)
        assert jpeg.header(out.getvalue()) == (HW[0], HW[1], 3)
        decoded = jpeg.decode(out.getvalue(), "frame", HW[0] * HW[1])
        assert np.abs(decoded.astype(int) - smooth).mean() < 3
    cmyk = io.BytesIO()
    Image.new("CMYK", (8, 8)).save(cmyk, format="JPEG")
    with pytest.raises(ProtocolError, match="4 channel"):
        jpeg.decode(cmyk.getvalue(), "frame", 64)


def test_images_travel_as_data_frames_and_small_arrays_inline():
    obs = make_obs(np.random.default_rng(5))
    frames = encode(ActRequest(12, obs))
    header = msgpack.unpackb(frames[0], raw=False)
    assert len(frames) == 1 + len(VIEWS)
    for k, view in enumerate(VIEWS, start=1):
        image = header["obs"]["images"][view]
        assert image["frame"] == k and "data" not in image
        assert bytes(frames[k]) == obs.images[view].tobytes()
    assert "data" in header["obs"]["state"]  # 20 bytes: inline
    back = decode([bytes(f) for f in frames])
    for view in VIEWS:
        np.testing.assert_array_equal(back.obs.images[view], obs.images[view])
    everything = encode(ActRequest(12, obs), frame_min_bytes=0)
    assert len(everything) == 2 + len(VIEWS)  # the state too
    np.testing.assert_array_equal(decode(everything).obs.state, obs.state)
    jpeg_frames = encode(ActRequest(12, obs), image_format="jpeg", frame_min_bytes=0)
    assert msgpack.unpackb(jpeg_frames[0])["obs"]["images"]["front"]["format"] == "jpeg"
    assert decode(jpeg_frames).obs.images["front"].shape == (*HW, 3)


def framed_act() -> tuple[dict, list[bytes]]:
    frames = encode(ActRequest(13, make_obs(np.random.default_rng(6))))
    return msgpack.unpackb(frames[0], raw=False), [bytes(f) for f in frames[1:]]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d, f: d["obs"]["images"]["front"].update(frame=3), "obs.images['front'].frame"),
        (lambda d, f: d["obs"]["images"]["front"].update(frame=0), "obs.images['front'].frame"),
        (lambda d, f: d["obs"]["images"]["front"].update(frame=True), "obs.images['front'].frame"),
        (lambda d, f: d["obs"]["images"]["front"].update(frame="1"), "obs.images['front'].frame"),
        (lambda d, f: d["obs"]["images"]["wrist"].update(frame=1), "obs.images['wrist'].frame"),
        (lambda d, f: d["obs"]["images"]["front"].update(data=f[0]), "obs.images['front']"),
        (lambda d, f: f.__setitem__(1, f[1][:-1]), "obs.images['wrist'].frame"),
        (lambda d, f: d["obs"]["state"].update(frame=1), "obs.state"),  # and data
        (lambda d, f: d["obs"]["state"].update(frame=1, data=None), "obs.state.frame"),  # taken
    ],
)
def test_bad_frame_references_are_named(mutate, field):
    d, frames = framed_act()
    mutate(d, frames)
    with pytest.raises(ProtocolError) as info:
        decode([repack(d), *frames])
    assert info.value.code == ErrorCode.BAD_FIELD and info.value.field == field, info.value
    assert info.value.request_id == 13


def test_frames_that_are_not_one_message_are_malformed():
    d, frames = framed_act()
    error = expect_frames([repack(d), *frames, b"stray"], ErrorCode.MALFORMED)
    assert "frame 3 of 3" in str(error) and error.request_id == 13
    expect_frames([], ErrorCode.MALFORMED)
    too_many = Limits(max_frames=1)
    assert "exceed" in str(expect_frames([repack(d), *frames], ErrorCode.MALFORMED, too_many))
    total = len(repack(d)) + sum(map(len, frames))
    small = Limits(max_message_bytes=total - 1)
    assert str(total) in str(expect_frames([repack(d), *frames], ErrorCode.MALFORMED, small))
    v1 = {**d, "v": 1}
    expect_frames([repack(v1), *frames], ErrorCode.VERSION_MISMATCH)


def expect_frames(frames: list, code: ErrorCode, limits: Limits | None = None) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(frames, limits)
    assert info.value.code == code, info.value
    return info.value


def test_empty_arrays_travel():
    a = np.zeros((0, 3), np.float32)
    d = protocol.pack_array(a)
    assert protocol.unpack_array(d, "x").shape == (0, 3)


# ---------------------------------------------------------------- the fast readers


def _checked(kind: str, d: dict, frames: list, limits: Limits) -> object | None:
    """What the general decoder makes of a parsed map, or None where it refuses it."""
    reader = protocol.FrameReader(frames, limits)
    try:
        message = protocol.MESSAGE_TYPES[kind].from_wire(d, reader)
        reader.check_all_taken()
    except ProtocolError:
        return None
    return message


def _same(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if hasattr(a, "__dataclass_fields__"):
        return all(_same(getattr(a, k), getattr(b, k)) for k in a.__dataclass_fields__)
    return a == b


def _mutations():
    leaf = (
        st.none() | st.booleans() | st.integers(-5, 2**64 - 1) | st.floats() | st.text(max_size=4)
    )
    leaf |= st.binary(max_size=8) | st.lists(st.integers(-2, 4), max_size=4)
    return st.lists(
        st.tuples(st.integers(0, 10**6), st.sampled_from(["set", "del"]), leaf), max_size=3
    )


def _paths(d: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix and prefix not in (("v",), ("type",)) else []  # decode checks those
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, (*prefix, k))
    return out


def _mutate(d: dict, frames: list, edits: list, frame_edit: int) -> tuple[dict, list]:
    import copy

    d, frames = copy.deepcopy(d), list(frames)
    for pick, how, value in edits:
        paths = _paths(d)
        path = paths[pick % len(paths)]
        parent = d
        for key in path[:-1]:
            parent = parent[key]
        if how == "del":
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    if frame_edit == 1 and frames:
        frames[-1] = frames[-1][:-1]
    elif frame_edit == 2:
        frames.append(b"stray")
    elif frame_edit == 3 and frames:
        frames.pop()
    return d, frames


@pytest.mark.parametrize("kind", ["act", "act_reply"])
def test_fast_readers_agree_with_the_general_decoder(kind):
    from limbic.runtime.fast_path import READERS

    rng = np.random.default_rng(8)
    limits = Limits(max_image_pixels=HW[0] * HW[1])
    if kind == "act":
        message = ActRequest(21, make_obs(rng), 40)
    else:
        message = ActReply(22, rng.standard_normal((4, 3)).astype(np.float32), 3, Timings(1.5))
    for frame_min_bytes in (0, 1024, 2**62):
        header, *frames = encode(message, frame_min_bytes=frame_min_bytes)
        d, frames = msgpack.unpackb(header, raw=False), [bytes(f) for f in frames]
        fast = READERS[kind](d, frames, limits)
        assert fast is not None and _same(fast, _checked(kind, d, frames, limits))

    @settings(max_examples=400, deadline=None, database=None)
    @given(_mutations(), st.integers(0, 3))
    def agree(edits, frame_edit):
        bad, bad_frames = _mutate(d, frames, edits, frame_edit)
        fast = READERS[kind](bad, bad_frames, limits)
        if fast is not None:  # what the fast reader accepts, the general decoder accepts alike
            assert _same(fast, _checked(kind, bad, bad_frames, limits)), (bad, fast)

    header, *frames = encode(message, frame_min_bytes=0)
    d, frames = msgpack.unpackb(header, raw=False), [bytes(f) for f in frames]
    agree()
