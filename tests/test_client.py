"""The client against live servers: typed errors, reconnects, heartbeats, CURVE, chunking."""

from __future__ import annotations

import os
import stat
import threading

import msgpack
import numpy as np
import pytest
import zmq
from serving import (
    config,
    local_actions,
    make_obs,
    policy_runner,
    running_server,
    small_policy,
    wait_until,
)

from limbic.contracts import ContractError
from limbic.launch.serve import main as serve_main
from limbic.runtime import auth
from limbic.runtime.chunking import ActionChunkBroker
from limbic.runtime.client import (
    InferenceClient,
    RequestTooLargeError,
    ServerError,
    ServerTimeoutError,
    VersionMismatchError,
)
from limbic.runtime.protocol import PROTOCOL_VERSION, ErrorCode
from limbic.runtime.server import CurveConfig, InferenceServer


def free_endpoint() -> str:
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.ROUTER)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    s.close(0)
    return f"tcp://127.0.0.1:{port}"


def test_no_server_is_a_timeout_and_bad_input_a_server_error():
    rng = np.random.default_rng(0)
    client = InferenceClient(free_endpoint(), timeout_s=0.2, heartbeat_interval_s=0)
    with pytest.raises(ServerTimeoutError, match="no reply to hello"):
        client.act(make_obs(rng))
    assert not client.server_alive
    client.close()
    with (
        running_server() as server,
        InferenceClient(server.endpoint, timeout_s=10, validate=False) as client,
    ):
        obs = make_obs(rng)
        del obs.images["wrist"], obs.frame_timestamps_ns["wrist"]
        with pytest.raises(ServerError) as info:
            client.act(obs)
        assert info.value.code == ErrorCode.BAD_FIELD and info.value.field == "obs.images"
        assert "missing view(s) ['wrist']" in str(info.value)
        assert client.act(make_obs(rng)).actions.shape == (4, 3)
    with running_server() as server:
        client = InferenceClient(server.endpoint, timeout_s=10, heartbeat_interval_s=0)
        obs = make_obs(rng)
        obs.state = obs.state[:2]
        with pytest.raises(ContractError, match="state"):  # checked locally, even on a first call
            client.act(obs)
        assert server.stats()["requests"] == 1  # the hello; the bad observation never left
        client.close()


def test_oversized_requests_are_refused_before_sending():
    rng = np.random.default_rng(1)
    with (
        running_server(max_message_bytes=4096) as server,
        InferenceClient(server.endpoint, timeout_s=10) as client,
    ):
        with pytest.raises(RequestTooLargeError, match="4096"):
            client.act(make_obs(rng))  # two raw 24x32 frames: 4.6 KB
        assert client.act(make_obs(rng), image_format="jpeg").actions.shape == (4, 3)


def test_a_server_of_another_protocol_version_is_a_version_mismatch():
    ctx = zmq.Context.instance()
    peer = ctx.socket(zmq.ROUTER)
    port = peer.bind_to_random_port("tcp://127.0.0.1")

    def answer_in_the_next_version() -> None:
        if peer.poll(10_000):
            ident, payload = peer.recv_multipart()
            request = msgpack.unpackb(payload, raw=False)
            reply = {"v": PROTOCOL_VERSION + 1, "type": "hello_reply", "id": request["id"]}
            peer.send_multipart([ident, msgpack.packb(reply)])

    thread = threading.Thread(target=answer_in_the_next_version)
    thread.start()
    try:
        with pytest.raises(VersionMismatchError):
            InferenceClient(f"tcp://127.0.0.1:{port}", timeout_s=10).connect()
    finally:
        thread.join()
        peer.close(0)


def test_client_notices_a_dead_server_and_reconnects_when_it_is_back():
    rng = np.random.default_rng(2)
    module = small_policy()
    first = InferenceServer(config(weights_endpoint=""), policy_runner(module)).start()
    endpoint = first.endpoint
    client = InferenceClient(endpoint, timeout_s=0.3, heartbeat_interval_s=0.05)
    try:
        client.connect()
        obs = make_obs(rng)
        client.act(obs)
        first.stop()
        wait_until(lambda: not client.server_alive, what="the heartbeat to notice the dead server")
        with pytest.raises(ServerTimeoutError):
            client.act(obs)
        second = InferenceServer(
            config(endpoint=endpoint, weights_endpoint=""), policy_runner(module)
        ).start()
        try:
            wait_until(lambda: client.server_alive, what="the heartbeat to reconnect")
            reply = client.act(obs)
            np.testing.assert_allclose(reply.actions, local_actions(module, obs), atol=1e-6)
        finally:
            second.stop()
    finally:
        client.close()
        first.stop()


def test_keygen_writes_owner_only_files(tmp_path):
    assert serve_main(["keygen", "--out", str(tmp_path), "--name", "server"]) == 0
    for name in ("server.key", "server.key_secret"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600
    public, secret = auth.load_keypair(tmp_path / "server.key_secret")
    assert auth.load_public_key(tmp_path / "server.key") == public and len(secret) == 40
    with pytest.raises(FileExistsError, match="--force"):
        auth.generate_keypair(tmp_path, "server")
    os.chmod(tmp_path / "server.key_secret", 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        auth.load_keypair(tmp_path / "server.key_secret")


def test_curve_admits_only_clients_with_the_right_keys(tmp_path):
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    server_pub, server_sec = auth.generate_keypair(keys, "server")
    arm_pub, arm_sec = auth.generate_keypair(keys, "arm")
    _, stranger_sec = auth.generate_keypair(keys, "stranger")
    allowed.mkdir()
    (allowed / "arm.key").write_bytes(arm_pub.read_bytes())
    curve = CurveConfig(
        enabled=True, server_secret_key=str(server_sec), authorized_clients_dir=str(allowed)
    )
    rng = np.random.default_rng(3)
    with running_server(curve=curve) as server:
        with InferenceClient(
            server.endpoint, timeout_s=10, server_public_key=server_pub, client_secret_key=arm_sec
        ) as arm:
            assert arm.act(make_obs(rng)).actions.shape == (4, 3)
        for kwargs in ({"server_public_key": server_pub, "client_secret_key": stranger_sec}, {}):
            outsider = InferenceClient(
                server.endpoint, timeout_s=0.5, heartbeat_interval_s=0, **kwargs
            )
            with pytest.raises(ServerTimeoutError):
                outsider.act(make_obs(rng))
            outsider.close()


class Scripted:
    """An infer function the test releases by hand: chunk k holds value 10*k + index."""

    def __init__(self, chunk_len: int):
        self.chunk_len = chunk_len
        self.calls: list[int] = []
        self.release = threading.Semaphore(0)

    def __call__(self, obs) -> np.ndarray:
        self.calls.append(obs.step)
        if not self.release.acquire(timeout=10):
            raise TimeoutError("not released")
        k = len(self.calls)
        return (10 * k + np.arange(self.chunk_len, dtype=np.float32))[:, None]


def test_chunk_broker_prefetches_and_skips_the_stale_prefix():
    infer = Scripted(chunk_len=6)
    rng = np.random.default_rng(4)
    with ActionChunkBroker(
        infer, control_dt_s=0.1, margin_ticks=2, timeout_s=10, fetch="prefetch"
    ) as broker:
        infer.release.release()
        out = [broker.act(make_obs(rng, 0))[0]]  # first chunk: the arm waits once, at start
        assert broker.lead_ticks >= 2
        for step in range(1, 4):
            out.append(broker.act(make_obs(rng, step))[0])
        lead = broker.lead_ticks
        wait_until(lambda: len(infer.calls) == 2, what="the prefetch request")
        assert infer.calls[1:] == [5 - lead]  # asked once lead ticks of the chunk were left
        assert broker.in_flight
        out.append(
            broker.act(make_obs(rng, 4))[0]
        )  # still covered by chunk 1 while chunk 2 is pending
        infer.release.release()
        wait_until(lambda: not broker.in_flight, what="chunk 2")
        out.append(broker.act(make_obs(rng, 5))[0])
        out.append(broker.act(make_obs(rng, 6))[0])
        requested = 5 - lead
        assert out[:5] == [10, 11, 12, 13, 14]
        assert out[5:] == [20 + 5 - requested, 20 + 6 - requested]  # chunk 2 joined at "now"
        assert broker.starved_ticks == 0 and broker.skipped_actions == 5 - requested
        infer.release.release(5)  # let any further prefetch finish so the broker closes at once


class Timed:
    """An infer function that takes ``seconds`` a call: chunk k holds 10*k + index."""

    def __init__(self, chunk_len: int, seconds: float):
        self.chunk_len, self.seconds = chunk_len, seconds
        self.calls: list[int] = []

    def __call__(self, obs) -> np.ndarray:
        self.calls.append(obs.step)
        threading.Event().wait(self.seconds)
        return (10 * len(self.calls) + np.arange(self.chunk_len, dtype=np.float32))[:, None]


def test_chunk_broker_inline_runs_every_chunk_from_its_first_action():
    """Inline: the next chunk is asked for at the tick the current one runs out, with that
    tick's observation, and runs whole: nothing skipped, nothing asked early."""
    infer = Timed(chunk_len=4, seconds=0.0)
    rng = np.random.default_rng(6)
    with ActionChunkBroker(infer, control_dt_s=0.1, timeout_s=10, fetch="inline") as broker:
        out = [float(broker.act(make_obs(rng, step))[0]) for step in range(10)]
    assert out == [10, 11, 12, 13, 20, 21, 22, 23, 30, 31]
    assert infer.calls == [0, 4, 8]
    assert broker.skipped_actions == 0 and broker.starved_ticks == 0
    assert broker.chunks_used == 3 and broker.inline_fetches == 2


def test_chunk_broker_auto_fetches_inline_while_round_trips_are_short():
    """Auto: inline while the worst recent round trip takes at most ``inline_share`` of the
    deadline; a slower server makes it ask early instead (and skip what is past)."""
    rng = np.random.default_rng(7)
    fast = Timed(chunk_len=4, seconds=0.0)
    with ActionChunkBroker(fast, control_dt_s=0.1, timeout_s=10) as broker:
        assert broker.fetch == "auto"
        for step in range(8):
            broker.act(make_obs(rng, step))
        assert not broker.prefetching and fast.calls == [0, 4]
    slow = Timed(chunk_len=4, seconds=0.1)  # over a tenth of the 1 s deadline
    with ActionChunkBroker(slow, control_dt_s=0.1, timeout_s=1.0, inline_share=0.1) as broker:
        broker.act(make_obs(rng, 0))
        assert broker.prefetching
        for step in range(1, 4):
            broker.act(make_obs(rng, step))
            threading.Event().wait(0.1)  # a control period: the prefetch arrives in it
        assert len(slow.calls) >= 2 and slow.calls[1] < 4  # asked before the chunk ran out
    with pytest.raises(ValueError, match="fetch: expected one of"):
        ActionChunkBroker(fast, control_dt_s=0.1, fetch="eager")


def test_chunk_broker_with_a_live_server_hands_out_the_right_actions():
    module = small_policy(chunk_len=4)
    rng = np.random.default_rng(5)
    with (
        running_server(policy_runner(module)) as server,
        InferenceClient(server.endpoint, timeout_s=10) as client,
    ):
        seen = {}

        def infer(obs):
            seen[obs.step] = local_actions(module, obs)
            return client.act(obs).actions

        with ActionChunkBroker(infer, control_dt_s=0.02, timeout_s=10) as broker:
            for step in range(12):
                obs = make_obs(rng, step)
                action = broker.act(obs)
                threading.Event().wait(0.02)
                # the action handed out is the one the chunk's observation planned for this tick
                origin = broker.chunk_origin
                np.testing.assert_allclose(action, seen[origin][step - origin], atol=1e-6)
        assert broker.chunks_used >= 3
