"""A live server on loopback: answers, batching, routing, critic values, deadlines, hot swap."""

from __future__ import annotations

import threading
import time

import msgpack
import numpy as np
import pytest
import torch
import zmq
from serving import (
    VIEWS,
    GatedPolicy,
    critic_runner,
    frames,
    let_loopback_deliver,
    local_actions,
    make_obs,
    policy_runner,
    running_server,
    small_critic,
    small_policy,
    wait_until,
)

from limbic.runtime import _value
from limbic.runtime.client import InferenceClient, ServerError
from limbic.runtime.protocol import ActRequest, ErrorCode, decode, encode
from limbic.runtime.servable import HashInstructionEncoder
from limbic.runtime.small_models import FixedCostPolicy
from limbic.runtime.weights import WeightPublisher


def test_act_replies_match_the_model_called_directly():
    module = small_policy()
    rng = np.random.default_rng(0)
    with (
        running_server(policy_runner(module)) as server,
        InferenceClient(server.endpoint, timeout_s=10) as client,
    ):
        assert client.info.policy.views == VIEWS and client.info.critic is None
        for step, fmt in enumerate(("raw", "raw", "jpeg")):
            obs = make_obs(rng, step, instruction=f"task {step % 2}")
            reply = client.act(obs, image_format=fmt)
            assert reply.actions.shape == (4, 3) and reply.policy_version == 0
            if fmt == "raw":
                np.testing.assert_allclose(reply.actions, local_actions(module, obs), atol=1e-6)
            t = reply.timings
            assert t.batch_size == 1 and min(t.queue_us, t.decode_us, t.infer_us, t.encode_us) > 0


def test_requests_that_arrive_together_are_batched_and_routed_back():
    module = GatedPolicy()
    rng = np.random.default_rng(1)
    obs = [make_obs(rng, i, instruction=f"task {i}") for i in range(6)]
    expected = [local_actions(module, o) for o in obs]
    module.calls = 0
    module.hold()
    ctx = zmq.Context.instance()
    with running_server(policy_runner(module), max_batch=16) as server:
        socks = [ctx.socket(zmq.DEALER) for _ in range(6)]
        try:
            for s in socks:
                s.setsockopt(zmq.LINGER, 0)
                s.connect(server.endpoint)
            socks[0].send_multipart(encode(ActRequest(100, obs[0])))
            wait_until(lambda: module.calls == 1, what="the first batch inside the model")
            for i in range(1, 6):  # these arrive while the server is busy with the first
                socks[i].send_multipart(encode(ActRequest(100 + i, obs[i])))
            let_loopback_deliver()
            module.open()
            for i, s in enumerate(socks):
                assert s.poll(10_000)
                reply = decode(s.recv_multipart())
                assert reply.id == 100 + i  # each client got its own answer
                assert reply.timings.batch_size == (1 if i == 0 else 5)
                np.testing.assert_allclose(reply.actions, expected[i], atol=1e-5)
            assert module.calls == 2
        finally:
            for s in socks:
                s.close(0)


def test_many_concurrent_clients_each_get_their_own_actions():
    """FixedCostPolicy answers state[0]: a mixed-up route would show as a wrong value."""
    policy = policy_runner(
        FixedCostPolicy(
            views=VIEWS, image_hw=(24, 32), state_dim=5, action_dim=3, lang_dim=16, cost_s=0.002
        )
    )
    failures, sizes = [], []
    with running_server(policy) as server:

        def actor(k: int) -> None:
            rng = np.random.default_rng(k)
            with InferenceClient(server.endpoint, timeout_s=10, heartbeat_interval_s=0) as client:
                for step in range(15):
                    obs = make_obs(rng, step)
                    obs.state[0] = k * 100 + step
                    reply = client.act(obs)
                    sizes.append(reply.timings.batch_size)
                    if not np.all(reply.actions == k * 100 + step):
                        failures.append((k, step, reply.actions[0, 0]))

        threads = [threading.Thread(target=actor, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
    assert not failures and len(sizes) == 90


def test_critic_window_values_follow_the_fusion_rule():
    critic = small_critic()
    rng = np.random.default_rng(2)
    window = [frames(rng) for _ in range(5)]
    goal = frames(rng)
    lang = torch.from_numpy(HashInstructionEncoder(16).encode(["stack the blocks"]))

    def c(a, b):
        stack = lambda f: torch.from_numpy(np.stack([f[v] for v in VIEWS])[None])  # noqa: E731
        with torch.inference_mode():
            p, d = critic(stack(a), stack(b), lang)
        return float(p[0]), float(d[0])

    with running_server(policy_runner(), critic_runner(critic), max_batch=3) as server:
        with InferenceClient(server.endpoint, timeout_s=10) as client:
            for use_goal, phi0 in ((False, 0.0), (True, 0.3)):
                reply = client.critic(
                    window, "Stack the  blocks", goal=goal if use_goal else None, phi0=phi0
                )
                inc = [c(window[i], window[i + 1]) for i in range(4)]
                fwd = [c(window[0], window[t])[0] for t in range(1, 5)]
                bwd = [c(goal, window[t])[0] for t in range(1, 5)] if use_goal else None
                np.testing.assert_allclose(reply.progress, [p for p, _ in inc], atol=1e-5)
                np.testing.assert_allclose(reply.done_prob, [d for _, d in inc], atol=1e-5)
                expected = _value.fused_value([p for p, _ in inc], fwd, bwd, phi0)
                np.testing.assert_allclose(reply.value, expected, atol=1e-5)
            pair = client.critic(window[:2], "stack the blocks")
            assert pair.progress.shape == pair.value.shape == (1,)


def test_critic_request_without_a_critic_is_not_served():
    rng = np.random.default_rng(3)
    with running_server() as server, InferenceClient(server.endpoint, timeout_s=10) as client:
        with pytest.raises(ServerError) as info:
            client.critic([frames(rng), frames(rng)], "stack")
        assert info.value.code == ErrorCode.NOT_SERVED
        assert client.act(make_obs(rng)).actions.shape == (4, 3)


def test_requests_queued_past_their_budget_are_not_run():
    module = GatedPolicy()
    module.hold()
    rng = np.random.default_rng(4)
    ctx = zmq.Context.instance()
    with running_server(policy_runner(module), max_batch=1) as server:
        first, second = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
        try:
            for s in (first, second):
                s.setsockopt(zmq.LINGER, 0)
                s.connect(server.endpoint)
            first.send_multipart(encode(ActRequest(1, make_obs(rng))))
            wait_until(lambda: module.calls == 1, what="request 1 inside the model")
            # One socket keeps 3 ahead of 2 (the ROUTER fair-queues between sockets, not messages).
            second.send_multipart(encode(ActRequest(3, make_obs(rng))))
            second.send_multipart(encode(ActRequest(2, make_obs(rng), timeout_ms=1)))
            let_loopback_deliver()
            module.release()  # 1 finishes; 3 and 2 are read together; 3 (older) runs and is held
            wait_until(lambda: module.calls == 2, what="request 3 inside the model")
            time.sleep(0.01)  # 2's 1 ms budget runs out while it waits behind 3
            module.open()
            assert first.poll(10_000) and decode(first.recv_multipart()).id == 1
            replies = {}
            for _ in range(2):
                assert second.poll(10_000)
                reply = msgpack.unpackb(second.recv(), raw=False)
                replies[reply["id"]] = reply
            assert replies[3]["type"] == "act_reply"
            assert replies[2]["type"] == "error" and replies[2]["code"] == "deadline_exceeded"
            assert replies[2]["field"] == "timeout_ms"
            assert module.calls == 2  # 2 never reached the model
        finally:
            first.close(0)
            second.close(0)


def test_non_finite_model_output_is_refused_and_model_failures_are_reported():
    rng = np.random.default_rng(5)
    broken = FixedCostPolicy(
        views=VIEWS, image_hw=(24, 32), state_dim=5, action_dim=3, lang_dim=16, cost_s=0
    )
    with torch.no_grad():
        broken.scale.fill_(float("inf"))
    with (
        running_server(policy_runner(broken)) as server,
        InferenceClient(server.endpoint, timeout_s=10) as client,
    ):
        obs = make_obs(rng)
        obs.state[0] = 1.0
        with pytest.raises(ServerError) as info:
            client.act(obs)
        assert info.value.code == ErrorCode.INVALID_OUTPUT and info.value.field == "actions"
    lying = small_policy()
    lying.chunk_len = 5  # claims 5 actions per chunk; its head makes 4
    with (
        running_server(policy_runner(lying)) as server,
        InferenceClient(server.endpoint, timeout_s=10) as client,
    ):
        for _ in range(2):  # the server keeps serving after a failed batch
            with pytest.raises(ServerError) as info:
                client.act(make_obs(rng))
            assert (
                info.value.code == ErrorCode.INTERNAL and "Traceback" in info.value.server_traceback
            )


def test_silent_clients_are_forgotten_and_heartbeating_ones_kept():
    with running_server(heartbeat_interval_s=0.05, client_timeout_s=0.3) as server:
        with InferenceClient(server.endpoint, timeout_s=5) as live:
            assert live.server_alive
            gone = InferenceClient(server.endpoint, timeout_s=5, heartbeat_interval_s=0)
            gone.connect()
            wait_until(lambda: server.stats()["clients"] == 2, what="two clients")
            gone.close()
            wait_until(lambda: server.stats()["clients"] == 1, what="the silent client forgotten")
            threading.Event().wait(0.6)  # two client timeouts: only heartbeats keep `live` known
            assert server.stats()["clients"] == 1
            assert live.ping().policy_version == 0


def test_hot_swap_under_load_drops_nothing_and_reports_versions():
    weights = {v: small_policy(seed=10 + v) for v in (1, 2, 3)}
    served = small_policy(seed=0)
    rng = np.random.default_rng(6)
    obs = make_obs(rng)
    expected = {0: local_actions(served, obs)} | {
        v: local_actions(m, obs) for v, m in weights.items()
    }
    replies, errors = [], []
    stop = threading.Event()
    with running_server(policy_runner(served)) as server:

        def hammer() -> None:
            with InferenceClient(server.endpoint, timeout_s=10, heartbeat_interval_s=0) as client:
                while not stop.is_set():
                    try:
                        replies.append(client.act(obs))
                    except Exception as e:  # any failure is a test failure, reported below
                        errors.append(e)

        actor = threading.Thread(target=hammer)
        actor.start()
        try:
            with WeightPublisher(server.weights_endpoint, timeout_s=30) as learner:
                for version, module in weights.items():
                    before = len(replies)
                    wait_until(lambda b=before: len(replies) >= b + 3, what="replies between swaps")
                    ack = learner.publish("policy", version, module.state_dict())
                    assert ack.version == version
                    mark = len(replies)
                    wait_until(lambda m=mark: len(replies) >= m + 3, what="replies after the swap")
                    assert all(r.policy_version >= version for r in replies[mark + 1 :])
        finally:
            stop.set()
            actor.join(30)
        assert not errors
        versions = [r.policy_version for r in replies]
        assert versions == sorted(versions) and set(versions) == {0, 1, 2, 3}
        for r in replies:  # each reply was computed by the weights it names
            np.testing.assert_allclose(r.actions, expected[r.policy_version], atol=1e-5)
        assert server.stats()["policy_version"] == 3


def test_bad_weight_updates_are_refused_with_the_reason():
    good = small_policy(seed=3).state_dict()
    with (
        running_server(policy_runner(version=5)) as server,
        WeightPublisher(server.weights_endpoint, timeout_s=30) as learner,
    ):
        cases = [
            ("policy", 5, good, ErrorCode.STALE_VERSION, "version"),
            ("critic", 6, good, ErrorCode.NOT_SERVED, "target"),
            (
                "policy",
                6,
                {k: v for k, v in good.items() if k != "head.0.bias"},
                ErrorCode.BAD_FIELD,
                "tensors",
            ),
            (
                "policy",
                6,
                {**good, "head.0.bias": torch.zeros(3)},
                ErrorCode.BAD_FIELD,
                "tensors['head.0.bias']",
            ),
            (
                "policy",
                6,
                {**good, "head.0.bias": torch.full((64,), float("nan"))},
                ErrorCode.BAD_FIELD,
                "tensors['head.0.bias']",
            ),
        ]
        for target, version, tensors, code, field in cases:
            with pytest.raises(ServerError) as info:
                learner.publish(target, version, tensors)
            assert (info.value.code, info.value.field) == (code, field), info.value
        assert learner.publish("policy", 6, good).version == 6
        assert server.stats()["policy_version"] == 6


def test_weight_updates_above_the_size_limit_in_all_are_refused_not_dropped():
    tensors = small_policy(seed=4).state_dict()
    sizes = [t.numel() * t.element_size() for t in tensors.values()]
    limit = max(sizes) + 1024  # every tensor's frame fits; all of them together do not
    assert sum(sizes) > limit
    with (
        running_server(policy_runner(), max_weights_bytes=limit) as server,
        WeightPublisher(server.weights_endpoint, timeout_s=30) as learner,
    ):
        with pytest.raises(ServerError) as info:
            learner.publish("policy", 1, tensors)
        assert info.value.code == ErrorCode.MALFORMED and f"exceeds {limit}" in str(info.value)
        assert server.stats()["policy_version"] == 0


def test_serve_from_the_hydra_config_with_a_safetensors_checkpoint(tmp_path):
    from safetensors.torch import save_file

    from limbic.launch.compose import compose
    from limbic.runtime.server import ServeConfig, serve

    trained = small_policy(seed=7)
    save_file(trained.state_dict(), tmp_path / "policy.safetensors")
    probe = zmq.Context.instance().socket(zmq.ROUTER)
    endpoint = f"tcp://127.0.0.1:{probe.bind_to_random_port('tcp://127.0.0.1')}"
    probe.close(0)
    cfg = compose(
        "serve",
        [
            f"server.endpoint={endpoint}",
            "server.weights_endpoint=''",
            "device=cpu",
            "policy.args.image_hw=[24,32]",
            "policy.args.state_dim=5",
            "policy.args.action_dim=3",
            "policy.args.lang_dim=16",
            "policy.instruction_encoder.args.dim=16",
            f"policy.weights={tmp_path / 'policy.safetensors'}",
            "policy.version=7",
            "critic.target=''",
        ],
        ServeConfig,
    )
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(cfg, stop))
    thread.start()
    try:
        obs = make_obs(np.random.default_rng(8))
        with InferenceClient(endpoint, timeout_s=20) as client:
            assert client.info.critic is None and client.info.policy_version == 7
            reply = client.act(obs)
        np.testing.assert_allclose(reply.actions, local_actions(trained, obs), atol=1e-6)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def test_a_partial_batch_waits_only_for_clients_that_are_due():
    """The batching policy on synthetic times: no wall clock involved."""
    from limbic.runtime.batching import Batcher, Pending

    def pending(client: bytes, t: float) -> Pending:
        return Pending([client], client, None, t, 0.0)

    batcher = Batcher(max_batch=4, max_wait_s=0.001)
    assert batcher.plan(0.0) == ("", 0.0)
    batcher.put("act", pending(b"lone", 0.0))
    assert batcher.plan(0.0) == ("act", 0.0)  # nobody else is due: run at once
    assert len(batcher.pop("act")) == 1
    for t in (0.010, 0.020):  # two clients in a 10 ms rhythm
        batcher.put("act", pending(b"a", t))
        batcher.put("act", pending(b"b", t + 0.0001))
        batcher.pop("act")
    batcher.put("act", pending(b"a", 0.030))
    kind, wait = batcher.plan(0.0301)
    assert kind == "act" and 0 < wait <= 0.001  # b is due at ~0.0301: wait for it
    assert batcher.plan(0.032) == ("act", 0.0)  # past the deadline: run
    batcher.pop("act")
    batcher.put("act", pending(b"a", 0.080))
    assert batcher.plan(0.0801) == ("act", 0.0)  # b is long overdue (gone): do not wait
    for i in range(4):
        batcher.put("critic", pending(bytes([i]), 0.09))
    assert batcher.plan(0.0902) == ("act", 0.0)  # the oldest kind goes first
    batcher.pop("act")
    assert batcher.plan(0.0902) == ("critic", 0.0)  # a full batch never waits
