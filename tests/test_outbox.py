"""The actor's outbox and sender: bounded memory, spill to disk, re-send, exactly-once delivery."""

from __future__ import annotations

import numpy as np
import pytest
import zmq
from runtime_helpers import RecordingLearner, episode, free_endpoint
from serving import wait_until

from limbic.runtime.codec import ErrorCode
from limbic.runtime.outbox import EpisodeSender, Outbox, OutboxConfig, peek_request_id
from limbic.runtime.protocol import (
    EpisodeAck,
    EpisodeUpload,
    ErrorReply,
    LearnerStatus,
    LearnerStatusRequest,
    ProtocolError,
    decode,
    encode_inline,
)


def payload(episode_id: str, seed: int = 0) -> bytes:
    ep = episode(episode_id, seed=seed)
    ep.action[:, -1] = 0.5
    return encode_inline(ep)


def fast(**kw) -> OutboxConfig:
    return OutboxConfig(
        **{"dead_after_s": 0.6, "status_interval_s": 0.1, "ack_timeout_s": 30.0, **kw}
    )


def test_episodes_beyond_the_memory_bound_spill_to_disk_and_survive_a_restart(tmp_path):
    box = Outbox(tmp_path / "spool", memory_episodes=1, max_episodes=3)
    for i in range(3):
        box.put(f"a-{i}", payload(f"a-{i}", i))
    assert box.in_memory == 1 and len(list((tmp_path / "spool").glob("*.episode"))) == 2
    assert box.full
    box.ack("a-1")
    assert len(list((tmp_path / "spool").glob("*.episode"))) == 1 and not box.full
    assert box.spill_all() == 1  # at shutdown: what is in memory goes to disk too
    again = Outbox(tmp_path / "spool", memory_episodes=1, max_episodes=3)  # a restarted actor
    assert again.ids() == ["a-0", "a-2"]  # oldest first, nothing lost, nothing twice
    episode_id, data = again.oldest(0)
    assert episode_id == "a-0" and decode(data, _big()).episode_id == "a-0"
    again.put("a-3", payload("a-3", 3))
    assert again.ids() == ["a-0", "a-2", "a-3"]


def _big():
    from limbic.runtime.protocol import Limits

    return Limits(max_message_bytes=2**30, max_array_len=2**16)


def test_request_id_is_read_without_unpacking_the_frames():
    ep = episode("a-0", seed=41)
    assert peek_request_id(encode_inline(ep)) == 41
    assert peek_request_id(b"\x00garbage") is None


def test_sender_delivers_in_order_and_the_outbox_empties(tmp_path):
    learner = RecordingLearner()
    box = Outbox(tmp_path / "spool", memory_episodes=1, max_episodes=10)
    for i in range(4):
        box.put(f"a-{i}", payload(f"a-{i}", i))
    sender = EpisodeSender(box, learner.endpoint, "a", fast()).start()
    try:
        wait_until(lambda: len(box) == 0, 30, "all episodes acknowledged")
        assert learner.stored_order == ["a-0", "a-1", "a-2", "a-3"]
        assert box.acked == 4 and not list((tmp_path / "spool").glob("*.episode"))
        assert sender.learner_alive and isinstance(sender.status, LearnerStatus)
    finally:
        sender.stop()
        learner.close()


def test_unacknowledged_episodes_are_resent_to_a_restarted_learner_and_stored_once(tmp_path):
    endpoint = free_endpoint()
    first = RecordingLearner(endpoint)
    first.hold.set()  # receives, never acknowledges: then dies
    box = Outbox(tmp_path / "spool", memory_episodes=0, max_episodes=10)
    box.put("a-0", payload("a-0", 0))
    box.put("a-1", payload("a-1", 1))
    sender = EpisodeSender(box, endpoint, "a", fast()).start()
    try:
        wait_until(lambda: first.received >= 1, 30, "the first learner to receive a-0")
        first.close()
        wait_until(lambda: not sender.learner_alive, 30, "the sender to notice the learner is gone")
        second = RecordingLearner(endpoint)
        # a-0 reached the store before the crash; only its acknowledgement was lost
        second.episodes["a-0"] = decode(payload("a-0"), _big())
        try:
            wait_until(lambda: len(box) == 0, 30, "re-sent episodes acknowledged")
            assert "a-1" in second.stored_order and "a-0" not in second.stored_order
            assert second.inbox.counters["duplicates"] >= 1
            assert sender.resends >= 1
        finally:
            second.close()
    finally:
        sender.stop()


def test_a_refused_episode_is_kept_aside_and_the_rest_still_go(tmp_path):
    def check(ep: EpisodeUpload) -> None:
        if ep.episode_id == "a-1":
            raise ProtocolError(ErrorCode.BAD_FIELD, "state", "wrong size", ep.id)

    learner = RecordingLearner(check=check)
    box = Outbox(tmp_path / "spool", memory_episodes=4, max_episodes=10)
    for i in range(3):
        box.put(f"a-{i}", payload(f"a-{i}", i))
    sender = EpisodeSender(box, learner.endpoint, "a", fast()).start()
    try:
        wait_until(lambda: len(box) == 0, 30, "the outbox to empty")
        assert learner.stored_order == ["a-0", "a-2"]
        assert box.rejected == 1
        reason = (tmp_path / "spool" / "rejected" / "a-1.reason.txt").read_text()
        assert "bad_field" in reason and "state" in reason
    finally:
        sender.stop()
        learner.close()


def test_the_inbox_answers_bad_messages_with_errors_and_keeps_serving():
    learner = RecordingLearner()
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(learner.endpoint)

    def ask(data: bytes):
        sock.send(data)
        assert sock.poll(10_000), "no reply"
        return decode(sock.recv(), _big())

    try:
        assert ask(b"\xc1not msgpack").code == ErrorCode.MALFORMED
        bad = episode("a-9", steps=3)
        bad.state = bad.state[:2]  # 2 frames of state for 3 steps
        reply = ask(encode_inline(bad))
        assert (
            isinstance(reply, ErrorReply)
            and reply.code == ErrorCode.BAD_FIELD
            and reply.field == "state"
        )
        nan = episode("a-8", steps=2)
        nan.action[0, 0] = np.nan
        assert ask(encode_inline(nan)).field == "action"
        assert isinstance(ask(encode_inline(LearnerStatusRequest(5, "a"))), LearnerStatus)
        good = episode("a-1", steps=2)
        ack = ask(encode_inline(good))
        assert isinstance(ack, EpisodeAck) and ack.status == "stored" and ack.episode_id == "a-1"
        again = ask(encode_inline(good))
        assert again.status == "duplicate"
        assert learner.stored_order == ["a-1"]
    finally:
        sock.close()
        learner.close()


@pytest.mark.parametrize("image_format", ["raw", "jpeg"])
def test_episode_messages_round_trip(image_format):
    ep = episode("a-0", steps=4, seed=3)
    back = decode(encode_inline(ep, image_format=image_format), _big())
    assert back.episode_id == "a-0" and len(back) == 4
    for v in ep.images:
        assert back.images[v].shape == ep.images[v].shape
        if image_format == "raw":
            np.testing.assert_array_equal(back.images[v], ep.images[v])
    np.testing.assert_array_equal(back.action, ep.action)
    np.testing.assert_array_equal(back.policy_version, ep.policy_version)


def test_a_curve_learner_takes_episodes_only_from_actors_holding_its_key(tmp_path):
    from limbic.runtime import auth

    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    learner_pub, learner_sec = auth.generate_keypair(keys, "learner")
    arm_pub, arm_sec = auth.generate_keypair(keys, "arm")
    _, stranger_sec = auth.generate_keypair(keys, "stranger")
    allowed.mkdir()
    (allowed / "arm.key").write_bytes(arm_pub.read_bytes())
    learner = RecordingLearner(
        curve_keys=auth.load_keypair(learner_sec), authorized_clients_dir=str(allowed)
    )
    server_key = auth.load_public_key(learner_pub)
    senders = []
    try:
        arm_box = Outbox(None, memory_episodes=4, max_episodes=4)
        arm_box.put("arm-0", payload("arm-0"))
        senders.append(
            EpisodeSender(
                arm_box,
                learner.endpoint,
                "arm",
                fast(),
                server_public_key=server_key,
                client_secret_key=arm_sec,
            ).start()
        )
        stranger_box = Outbox(None, memory_episodes=4, max_episodes=4)
        stranger_box.put("x-0", payload("x-0"))
        senders.append(
            EpisodeSender(
                stranger_box,
                learner.endpoint,
                "x",
                fast(),
                server_public_key=server_key,
                client_secret_key=stranger_sec,
            ).start()
        )
        plain_box = Outbox(None, memory_episodes=4, max_episodes=4)
        plain_box.put("p-0", payload("p-0"))
        senders.append(EpisodeSender(plain_box, learner.endpoint, "p", fast()).start())
        wait_until(lambda: len(arm_box) == 0, 30, "the key holder's episode acknowledged")
        wait_until(lambda: senders[0].learner_alive, 5, "status replies")
        assert learner.stored_order == ["arm-0"]
        assert not senders[1].learner_alive and not senders[2].learner_alive
        assert len(stranger_box) == len(plain_box) == 1  # kept for later, never delivered
    finally:
        for s in senders:
            s.stop()
        learner.close()
