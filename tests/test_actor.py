"""The actor loop on a real MuJoCo arm, a live inference server and a learner endpoint on loopback."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from runtime_helpers import (
    HW,
    LANG,
    RecordingLearner,
    SimPolicy,
    episode,
    free_endpoint,
    robot_config,
    runner,
    serving,
)
from serving import wait_until

from limbic.launch.config import ConfigError
from limbic.runtime.actor import ActorConfig, ActorLoop, run_actor
from limbic.runtime.backends import TorchRunner
from limbic.runtime.client import InferenceClient
from limbic.runtime.outbox import Outbox, OutboxConfig
from limbic.runtime.protocol import encode_inline
from limbic.runtime.servable import CachedInstructionEncoder, HashInstructionEncoder
from limbic.runtime.server import InferenceServer, ServerConfig
from limbic.runtime.small_models import SmallConvCritic

FAST_OUTBOX = OutboxConfig(dead_after_s=1.0, status_interval_s=0.1)


def actor_config(tmp_path, server: str, learner: str, **kw) -> ActorConfig:
    base = dict(
        robot=robot_config(step_limit=4),
        server=server,
        learner=learner,
        control_hz=20.0,
        out_dir=str(tmp_path / "actors"),
        outbox=FAST_OUTBOX,
    )
    return ActorConfig(**{**base, **kw})


class Running:
    """An :class:`ActorLoop` in a thread (opened there: the renderer belongs to its thread)."""

    def __init__(self, cfg: ActorConfig):
        self.stop = threading.Event()
        self.loop = ActorLoop(cfg, self.stop)
        self.report = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.loop.open()
            self.report = self.loop.run()
        except BaseException as e:
            self.error = e
        finally:
            self.loop.close()

    @property
    def sim_steps(self) -> int:
        env = self.loop.robot.env
        return -1 if env is None else env.t

    def join(self, timeout_s: float = 60.0) -> None:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "actor did not finish"
        if self.error is not None:
            raise self.error


def test_the_actor_runs_its_budget_and_every_episode_reaches_the_learner(tmp_path):
    learner = RecordingLearner()
    policy = SimPolicy()
    try:
        with serving(policy, version=3) as server:
            cfg = actor_config(tmp_path, server.endpoint, learner.endpoint, episodes=3)
            report = run_actor(cfg)
            assert report.episodes == 3 and report.acked == 3 and report.unacked == 0
            assert report.episode_ids == ["actor-0-000000", "actor-0-000001", "actor-0-000002"]
            assert learner.stored_order == report.episode_ids
            spec = SimPolicy().low.numpy(), SimPolicy().high.numpy()
            for ep in learner.episodes.values():
                t = len(ep)
                assert 1 <= t <= 4 and ep.state.shape[0] == t + 1
                assert all(f.shape == (t + 1, 64, 64, 3) for f in ep.images.values())
                assert (ep.policy_version == 3).all() and not ep.intervention.any()
                assert ((ep.action >= spec[0] - 1e-6) & (ep.action <= spec[1] + 1e-6)).all()
                assert (np.diff(ep.tick_ns) > 0).all() and (ep.action_ns >= ep.tick_ns).all()
            assert report.steps == sum(len(e) for e in learner.episodes.values())
            assert report.first_action_ns and min(report.first_action_ns) == 3
            # a second run of the same actor continues its numbering: no episode id is reused
            more = run_actor(actor_config(tmp_path, server.endpoint, learner.endpoint, episodes=5))
            assert more.episode_ids == ["actor-0-000003", "actor-0-000004"]
            assert len(learner.stored_order) == 5
    finally:
        learner.close()


def test_inline_fetching_runs_every_chunk_whole_and_prefetching_skips_its_start(tmp_path):
    """Chunks of 4 over 8-step episodes: fetched inline, each episode runs two chunks from their
    first actions, as evaluation runs them; prefetched, chunks are asked for early and the
    actions already past when one arrives are skipped."""
    learner = RecordingLearner()
    try:
        with serving(SimPolicy(chunk_len=4)) as server:
            robot = robot_config(step_limit=8)
            kw = dict(episodes=2, robot=robot, control_hz=10.0)
            inline = run_actor(
                actor_config(
                    tmp_path / "inline",
                    server.endpoint,
                    learner.endpoint,
                    chunk_fetch="inline",
                    **kw,
                )
            )
            assert inline.steps == 16 and inline.late_actions == 0
            assert inline.chunks == 4 and inline.skipped_actions == 0
            p50, p99 = inline.round_trip_ms
            assert 0 < p50 <= p99 and "round trip p50/p99" in inline.summary()
            early = run_actor(
                actor_config(
                    tmp_path / "early",
                    server.endpoint,
                    learner.endpoint,
                    chunk_fetch="prefetch",
                    **kw,
                )
            )
            assert early.steps == 16 and early.chunks > 4 and early.skipped_actions > 0
            assert "actions skipped" in early.summary()
    finally:
        learner.close()
    with pytest.raises(ConfigError, match="actor.chunk_fetch"):
        actor_config(tmp_path, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", chunk_fetch="eager")


@pytest.mark.parametrize("limit", [1, 0])
def test_an_actor_waits_while_a_live_learner_has_not_stored_its_episodes(tmp_path, limit):
    # the learner answers status at once but stores nothing until released: with a limit the
    # actor plays one episode past its unstored one and waits; without one it plays them all
    learner = RecordingLearner()
    learner.hold.set()
    try:
        with serving(SimPolicy()) as server:
            cfg = actor_config(
                tmp_path, server.endpoint, learner.endpoint, episodes=4, max_unacked_episodes=limit
            )
            run = Running(cfg)
            played = limit + 1 if limit else 4
            wait_until(lambda: len(run.loop.outbox) == played, 60, f"{played} episodes played")
            assert not run.stop.wait(1.0)  # a chance to overrun the limit
            assert len(run.loop.outbox) == played and run.loop.state.next_seq == played
            learner.hold.clear()
            run.join()
            assert run.report.episodes == 4 and run.report.acked == 4
            assert learner.stored_order == run.report.episode_ids
    finally:
        learner.close()


def test_a_learner_that_does_not_answer_never_stops_the_arm(tmp_path):
    # nothing listens at the learner's endpoint: the outbox keeps the episodes, the arm plays on
    nowhere = free_endpoint()
    with serving(SimPolicy()) as server:
        cfg = actor_config(tmp_path, server.endpoint, nowhere, episodes=3, max_unacked_episodes=1)
        run = Running(cfg)
        wait_until(lambda: run.loop.state.next_seq >= 3, 60, "three episodes with no learner")
        assert len(run.loop.outbox) == 3
        run.stop.set()
        run.join()
    with pytest.raises(ConfigError, match="actor.max_unacked_episodes"):
        actor_config(tmp_path, "tcp://127.0.0.1:1", nowhere, max_unacked_episodes=-1)


def test_late_actions_are_dropped_and_the_arm_holds_still(tmp_path):
    learner = RecordingLearner()
    policy = SimPolicy()
    try:
        with serving(policy) as server:
            run = Running(
                actor_config(
                    tmp_path,
                    server.endpoint,
                    learner.endpoint,
                    episodes=1,
                    robot=robot_config(step_limit=6),
                )
            )
            wait_until(lambda: run.loop.report.steps >= 2, 60, "two steps")
            policy.gate.clear()  # the model stalls: every reply comes after the deadline
            calls = policy.calls
            wait_until(lambda: policy.calls > calls, 30, "a stalled request")
            steps, sim_t = run.loop.report.steps, run.sim_steps
            late = run.loop.report.late_actions
            wait_until(lambda: run.loop.report.late_actions >= late + 3, 60, "late actions")
            assert (
                run.loop.report.steps == steps and run.sim_steps == sim_t
            )  # nothing executed late
            policy.gate.set()
            run.join()
        report = run.report
        assert report.episodes == 1 and report.late_actions >= 3 and report.held_ticks >= 3
        (ep,) = learner.episodes.values()
        assert ep.late_ticks >= 3 and len(ep) == report.steps
    finally:
        learner.close()


def test_a_dead_server_makes_the_actor_hold_the_arm_until_it_is_back(tmp_path):
    endpoint = free_endpoint()
    learner = RecordingLearner()
    policy = SimPolicy()
    try:
        server_cm = serving(policy, endpoint=endpoint)
        server_cm.__enter__()
        run = Running(
            actor_config(
                tmp_path, endpoint, learner.endpoint, episodes=2, robot=robot_config(step_limit=25)
            )
        )
        wait_until(lambda: run.loop.report.steps >= 3, 60, "some steps")
        server_cm.__exit__(None, None, None)  # the server is gone
        held = run.loop.report.held_ticks
        wait_until(lambda: run.loop.report.held_ticks >= held + 2, 60, "held ticks")
        sim_t, steps = run.sim_steps, run.loop.report.steps
        wait_until(lambda: run.loop.report.held_ticks >= held + 6, 60, "more held ticks")
        assert run.sim_steps == sim_t and run.loop.report.steps == steps  # the arm did not move
        with serving(policy, endpoint=endpoint):  # back: the actor goes on
            run.join(120)
        assert run.report.episodes == 2 and run.report.unacked == 0
        assert len(learner.stored_order) == 2
    finally:
        learner.close()


def test_the_served_critic_scores_every_frame_as_the_fused_potential(tmp_path):
    critic = SmallConvCritic(views=("front", "wrist"), image_hw=HW, lang_dim=LANG, seed=2)
    critic_runner = TorchRunner(
        critic, "critic", CachedInstructionEncoder(HashInstructionEncoder(LANG)), 0, "cpu"
    )
    learner = RecordingLearner()
    server = InferenceServer(
        ServerConfig(endpoint="tcp://127.0.0.1:*", weights_endpoint=""),
        runner(SimPolicy()),
        critic_runner,
    ).start()
    try:
        report = run_actor(actor_config(tmp_path, server.endpoint, learner.endpoint, episodes=1))
        assert report.episodes == 1 and report.critic_misses == 0
        (ep,) = learner.episodes.values()
        t = len(ep)
        assert ep.phi.shape == ep.done_prob.shape == (t + 1,) and ep.phi[0] == 0.0
        assert ((ep.phi >= 0) & (ep.phi <= 1)).all() and (
            (ep.done_prob >= 0) & (ep.done_prob <= 1)
        ).all()
        # the same fusion, recomputed from the stored frames: incremental chain and forward, averaged
        frames = [{v: ep.images[v][i] for v in ep.images} for i in range(t + 1)]
        with InferenceClient(server.endpoint, timeout_s=10) as client:
            inc = 0.0
            for i in range(1, t + 1):
                inc = float(
                    client.critic([frames[i - 1], frames[i]], ep.instruction, phi0=inc).value[0]
                )
                fwd = float(client.critic([frames[0], frames[i]], ep.instruction).value[0])
                assert abs(ep.phi[i] - 0.5 * (inc + fwd)) < 1e-5, i
    finally:
        server.stop()
        learner.close()


def test_a_restarted_actor_never_reuses_the_id_of_a_spooled_episode(tmp_path):
    cfg = actor_config(tmp_path, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2")
    cfg.home.mkdir(parents=True)
    (cfg.home / "state.json").write_text('{"next_seq": 2}')
    # the crash came after episode 2 was spooled, before the counter moved to 3
    Outbox(cfg.home / "outbox", 0, 10).put(
        "actor-0-000002", encode_inline(episode("actor-0-000002"))
    )
    loop = ActorLoop(cfg, threading.Event())
    try:
        assert loop.state.next_seq == 3 and loop.outbox.ids() == ["actor-0-000002"]
    finally:
        loop.client.close()
        loop.broker.close()
