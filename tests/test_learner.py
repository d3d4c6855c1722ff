"""The learner process's pieces in-process: durable exactly-once storage, exact resume, episode checks."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
import torch
from runtime_helpers import robot_config

from limbic.data.reader import load_episodes
from limbic.data.writer import read_limbic_episodes
from limbic.launch.config import ConfigError
from limbic.policy.rlpd import AgentConfig
from limbic.policy.vla import PolicyConfig, VLAPolicy
from limbic.runtime.codec import ErrorCode
from limbic.runtime.episode_store import EpisodeStore
from limbic.runtime.learner import CHECKPOINT, AsyncLearner, LearnerConfig, record_to_upload
from limbic.runtime.protocol import ProtocolError
from limbic.runtime.rollout import run_episode

TINY = AgentConfig(
    d_model=16, n_queries=1, feature_dim=32, hidden=32, n_q=2, q_subset=2, critic_warmup=0
)


def learner_config(tmp_path, **kw) -> LearnerConfig:
    base = dict(
        robot=robot_config(step_limit=5),
        policy=PolicyConfig(backbone="small_cnn", image_hw=(64, 64), agent=TINY),
        demos=2,
        online_episodes=3,
        batch_size=8,
        bc_pretrain_steps=3,
        eval_every=100,
        eval_episodes=1,
        videos=0,
        out_dir=str(tmp_path / "run"),
        progress=False,
        nice=0,
        weights_endpoint="",
        endpoint="tcp://127.0.0.1:0",
        use_videos=False,
        utd=1.0,
        seed=3,
    )
    return LearnerConfig(**{**base, **kw})


def online_upload(learner: AsyncLearner, k: int):
    """An online episode of the learner's own sim, as an actor would send it."""
    ep = run_episode(
        learner.env,
        learner.policy_action(False),
        learner.featurize,
        learner.lang,
        seed=500 + k,
        split="train",
        keep_observations=True,
    )
    up = record_to_upload(ep, f"actor-0-{k:06d}", "online", seed=500 + k)
    up.actor, up.seq = "actor-0", k
    up.intervention[:] = False
    up.policy_version[:] = 1
    return up


@pytest.fixture
def learner(tmp_path):
    lrn = AsyncLearner(learner_config(tmp_path), threading.Event())
    try:
        yield lrn
    finally:
        if lrn.store is not None:
            lrn.store.close()
        lrn.close()


def test_set_up_stores_demonstrations_durably_and_a_resumed_learner_is_exactly_where_it_was(
    learner, tmp_path
):
    learner.setup()
    assert learner.store.count("demo") == 2 and (learner.out / CHECKPOINT).exists()
    for k in range(2):
        learner.ingest(online_upload(learner, k))
    for _ in range(4):
        learner.policy.agent.update(learner._batch())
        learner.state.online_updates += 1
    learner.checkpoint()
    learner.ingest(online_upload(learner, 2))  # after the checkpoint: still in the replay on resume
    batch = learner._batch()
    learner.store.close()

    again = AsyncLearner(learner_config(tmp_path), threading.Event())
    try:
        again.setup()  # resume: no new demonstrations, no pre-training
        assert again.resumed["online_updates"] == 4 and again.resumed["replay_episodes"] == 5
        assert (
            again.state.online_updates == 4
            and again.policy.agent.updates == learner.policy.agent.updates
        )
        assert again.online_steps == learner.online_steps  # the replay index, in order
        for name in ("online", "demo"):
            a, b = learner.replay.partitions[name], again.replay.partitions[name]
            assert a.size == b.size and a.episodes == b.episodes
            np.testing.assert_array_equal(a.tokens[: 2 * a.size], b.tokens[: 2 * b.size])
            np.testing.assert_array_equal(a.action[: a.size], b.action[: b.size])
        for key, value in learner.policy.agent.actor_opt.state_dict()["state"].items():
            torch.testing.assert_close(
                again.policy.agent.actor_opt.state_dict()["state"][key], value
            )
        # training goes on identically: same batch, same update, same weights after
        m1 = learner.policy.agent.update({k: v.clone() for k, v in batch.items()})
        m2 = again.policy.agent.update({k: v.clone() for k, v in batch.items()})
        assert m1 == m2
        assert again.owed_updates == int(again.cfg.utd * again.online_steps[-1]) - 4
    finally:
        again.store.close()
        again.close()


def test_the_store_keeps_each_episode_once_across_crashes_between_its_steps(learner, tmp_path):
    learner.setup()
    up = online_upload(learner, 0)
    tokens = learner.compact_tokens(up)
    arrays = {
        "tokens": tokens,
        "state": up.state,
        "action": learner.normalizer.normalize(up.action),
        "reward": up.reward,
        "terminal": up.terminated,
        "phi": up.phi,
    }
    # A crash after the dataset write, before the replay index: the episode is in the dataset only.
    learner.store._write_dataset(up, {"actor": "actor-0"})
    learner.store.close()
    store = EpisodeStore(learner.out, learner.layout, use_videos=False)
    assert up.episode_id not in store
    store.add(up, arrays)  # the actor's re-send: indexed now, not written to the dataset again
    with pytest.raises(ValueError, match="already stored"):
        store.add(up, arrays)
    store.close()
    ids = [r["episode_id"] for r in read_limbic_episodes(learner.store.dataset_root("online"))]
    assert ids == [up.episode_id]
    episodes = load_episodes(learner.store.dataset_root("online"))
    assert len(episodes) == 1 and len(episodes[0]) == len(up)
    np.testing.assert_allclose(episodes[0].action, up.action)
    index = [
        json.loads(line)
        for line in (learner.out / "replay" / "index.jsonl").read_text().splitlines()
    ]
    assert [r["episode_id"] for r in index if r["source"] == "online"] == [up.episode_id]


def test_a_crash_inside_the_dataset_save_is_reconciled_from_the_intent_line(learner, tmp_path):
    learner.setup()
    up = online_upload(learner, 0)
    learner.store._write_dataset(up, {})
    learner.store.close()
    # LeRobot counted the episode but the id line never made it (crash inside save_episode).
    lines = learner.store.dataset_root("online") / "meta" / "limbic_episodes.jsonl"
    lines.write_text("")
    store = EpisodeStore(learner.out, learner.layout, use_videos=False)
    writer = store._writer("online")
    assert store._in_dataset["online"] == {up.episode_id: 0} and writer.total_episodes == 1
    store.close()


def test_episodes_that_do_not_fit_the_arm_are_refused_naming_the_field(learner):
    learner.setup()
    good = online_upload(learner, 0)
    learner.check_episode(good)
    wrong_view = online_upload(learner, 1)
    wrong_view.images["front"] = wrong_view.images["front"][:, :32]
    bad_bounds = online_upload(learner, 2)
    bad_bounds.action[1, 0] = 1.0  # metres per tick: far outside the declared bound
    no_wrist = online_upload(learner, 3)
    del no_wrist.images["wrist"]
    for ep, field_name in (
        (wrong_view, "images['front']"),
        (bad_bounds, "action[1][dx]"),
        (no_wrist, "images"),
    ):
        with pytest.raises(ProtocolError) as e:
            learner.check_episode(ep)
        assert e.value.code == ErrorCode.BAD_FIELD and e.value.field == field_name


def test_the_checkpoint_is_a_servable_policy(learner):
    learner.setup()
    served = VLAPolicy.load(learner.out / CHECKPOINT, explore=True)
    obs = learner.env.reset(seed=1)
    images = torch.from_numpy(np.stack([obs.images[v] for v in served.views]))[None]
    lang = learner.lang(obs.instruction)
    learner.policy.explore = False
    served.explore = False
    torch.testing.assert_close(
        served(images, torch.from_numpy(obs.state)[None], lang),
        learner.policy(images, torch.from_numpy(obs.state)[None], lang),
    )


def test_a_trainable_backbone_is_stored_as_frames_trained_and_published(learner):
    assert learner.policy.trains_backbone  # the fixture's small CNN
    start = {k: v.clone() for k, v in learner.policy.backbone.state_dict().items()}
    learner.setup()
    demo = learner.replay.partitions["demo"]
    assert demo.tokens.dtype == np.uint8 and demo.tokens.shape[1:] == (2, 64, 64, 3)
    trained = learner.policy.backbone.state_dict()
    assert any(not torch.equal(start[k], trained[k]) for k in start)  # pre-training trained it
    published = learner.snapshot()
    for k, v in trained.items():
        np.testing.assert_array_equal(published[f"backbone.{k}"], v.numpy())
    served = VLAPolicy.load(learner.out / CHECKPOINT)
    for k, v in served.backbone.state_dict().items():
        assert torch.equal(v, trained[k])


def test_weight_lag_counts_actors_acting_through_a_publication_only():
    from limbic.runtime.weight_sync import WeightLag

    ms = 1_000_000
    lag = WeightLag()
    pubs = [{"version": 2, "publish_ns": 1000 * ms}, {"version": 3, "publish_ns": 5000 * ms}]
    tick = np.arange(0, 2000, 100, dtype=np.int64) * ms  # ticking every 100 ms
    version = np.where(tick < 1100 * ms, 1, 2)  # v2 first used by the tick at 1100 ms
    lag.add_episode(pubs, version, tick, tick + 20 * ms)  # each action arrives 20 ms after its tick
    assert lag.samples == {2: pytest.approx(0.12)}  # 1120 ms - 1000 ms; v3 was never used
    # an actor that was idle when v3 came out (its episode starts later) says nothing about v3
    later = np.arange(7000, 7500, 100, dtype=np.int64) * ms
    lag.add_episode(pubs, np.full(5, 3), later, later + 20 * ms)
    assert set(lag.samples) == {2}
    # another actor, ticking 50 ms later, got v2 sooner: the first action computed with it counts
    other = tick + 50 * ms
    lag.add_episode(pubs, np.where(other < 1050 * ms, 1, 2), other, other + 20 * ms)
    assert lag.samples[2] == pytest.approx(0.07) and lag.median_s == pytest.approx(0.07)


def test_acting_lag_counts_the_updates_past_the_weights_that_began_an_episode():
    from limbic.runtime.weight_sync import ActingLag

    lag = ActingLag()
    pubs = [{"version": 1, "updates": 0}, {"version": 2, "updates": 10}, {"version": 3}]
    lag.add_episode(pubs, np.array([0, 1, 1, 2, 2]), updates_now=25)  # held first, began on v1
    lag.add_episode(pubs, np.array([2, 2, 2]), updates_now=25)
    assert lag.samples == [25, 15] and lag.median == 20
    lag.add_episode(pubs, np.array([3, 3]), updates_now=30)  # published without its updates
    lag.add_episode(pubs, np.array([7, 7]), updates_now=30)  # weights of an earlier learner
    lag.add_episode(pubs, np.array([0, 0]), updates_now=30)  # held throughout
    assert lag.samples == [25, 15]
    assert np.isnan(ActingLag().median)


def test_an_episode_from_an_actor_lands_in_the_replay_as_the_in_process_loop_stores_it(learner):
    learner.setup()
    ep = run_episode(
        learner.env,
        learner.policy_action(False),
        learner.featurize,
        learner.lang,
        seed=77,
        split="train",
        keep_observations=True,
    )
    upload = record_to_upload(ep, "actor-0-000000", "online", seed=77)
    learner.ingest(upload)  # the actor's path: frames -> backbone -> compressor on the learner
    p = learner.replay.partitions["online"]
    t = len(ep)
    rows = np.arange(t)
    np.testing.assert_allclose(
        p.tokens[p.obs[rows]].astype(np.float32), ep.tokens[:-1].astype(np.float32), atol=2e-3
    )
    np.testing.assert_allclose(
        p.tokens[p.next[rows][-1]].astype(np.float32), ep.tokens[-1].astype(np.float32), atol=2e-3
    )
    np.testing.assert_array_equal(p.action[rows], ep.action)  # normalised from the applied actions
    np.testing.assert_array_equal(p.reward[rows, 0], ep.reward)
    np.testing.assert_array_equal(p.terminal[rows], ep.terminal)
    np.testing.assert_array_equal(p.state[p.obs[rows]], ep.state[:-1])
    assert learner.online_steps == [t] and learner.owed_updates == t  # utd 1


def test_weights_reach_a_restarted_server_and_versions_only_grow(tmp_path):
    from runtime_helpers import SimPolicy, free_endpoint, runner
    from serving import wait_until

    from limbic.runtime.server import InferenceServer, ServerConfig
    from limbic.runtime.weight_sync import WeightSync

    weights = free_endpoint()

    def start(version: int) -> InferenceServer:
        cfg = ServerConfig(endpoint="tcp://127.0.0.1:*", weights_endpoint=weights)
        return InferenceServer(cfg, runner(SimPolicy(), version=version)).start()

    state = {k: v.numpy().copy() for k, v in SimPolicy(seed=5).state_dict().items()}
    server = start(version=4)  # already above what this learner would publish first
    sync = WeightSync(
        weights, tmp_path / "weights.jsonl", first_version=1, check_interval_s=0.1
    ).start()
    try:
        sync.offer(state, updates=40)
        wait_until(
            lambda: server.policy.version == 5, 30, "v5 after catching up with the server's v4"
        )
        server.stop()
        server = start(version=0)  # a restarted server holds its initial weights
        wait_until(lambda: server.policy.version > 5, 30, "the weights published again")
        records = [
            json.loads(line) for line in (tmp_path / "weights.jsonl").read_text().splitlines()
        ]
        versions = [r["version"] for r in records]
        assert versions == sorted(set(versions)) and versions[0] == 5
        assert {r["updates"] for r in records} == {40}  # the same snapshot, the same updates
    finally:
        sync.stop()
        server.stop()


def test_encoding_an_episode_video_leaves_the_thread_scheduling_alone(tmp_path):
    # SVT-AV1 makes its calling thread real-time (SCHED_FIFO 99) when it may: a learner that
    # stores episodes would pre-empt the control loops. The writer restores the policy.
    from limbic.contracts import ActionSpec, Observation
    from limbic.data.writer import DatasetLayout, EpisodeWriter

    spec = ActionSpec("ee_delta", ("dx", "gripper"), np.array([-1.0, 0.0]), np.array([1.0, 1.0]))
    layout = DatasetLayout(("front",), (32, 32), ("q",), spec, 10, "sim")
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    with EpisodeWriter(tmp_path / "d", layout, use_videos=True, parallel_encoding=False) as writer:
        for t in range(3):
            obs = Observation(
                t, {"front": np.zeros((32, 32, 3), np.uint8)}, np.zeros(1, np.float32), "go", "e", t
            )
            writer.add_step(obs, np.zeros(2, np.float32))
        writer.save_episode()
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before
    # threads started afterwards copy glibc's record of the policy: ZeroMQ's I/O threads do
    import zmq

    ctx = zmq.Context()
    try:
        ctx.socket(zmq.ROUTER).bind("tcp://127.0.0.1:*")
        assert not {os.SCHED_FIFO, os.SCHED_RR} & set(_thread_policies())
    finally:
        ctx.destroy(linger=0)


def test_the_learners_datasets_encode_video_without_real_time_threads(tmp_path):
    """The learner's codec (``vcodec``, h264 by default) encodes on ordinary threads that keep the
    learner's niceness, where SVT-AV1 (LeRobot's default), run as root, starts real-time ones
    that pre-empt the actors' control loops while an episode is stored."""
    from limbic.contracts import ActionSpec, Observation
    from limbic.data.writer import DatasetLayout, EpisodeWriter

    spec = ActionSpec("ee_delta", ("dx", "gripper"), np.array([-1.0, 0.0]), np.array([1.0, 1.0]))
    layout = DatasetLayout(("front", "wrist"), (128, 128), ("q",), spec, 10, "sim")
    rng = np.random.default_rng(0)
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(_thread_policies())

    vcodec = LearnerConfig.__dataclass_fields__["vcodec"].default
    with EpisodeWriter(tmp_path / "d", layout, vcodec=vcodec, parallel_encoding=False) as writer:
        for t in range(30):
            images = {v: rng.integers(0, 255, (128, 128, 3), np.uint8) for v in layout.views}
            obs = Observation(t, images, np.zeros(1, np.float32), "go", "e", t)
            writer.add_step(obs, np.zeros(2, np.float32))
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            writer.save_episode()
        finally:
            done.set()
            watcher.join()
    assert seen and not {os.SCHED_FIFO, os.SCHED_RR} & seen
    with pytest.raises(ConfigError, match="learner.vcodec"):
        learner_config(tmp_path, vcodec="mjpeg")


def test_storing_episodes_keeps_the_encoders_statistics_out_of_the_log(tmp_path, capfd):
    # LeRobot gives FFmpeg its default stderr logging back after each encode: x264 would then
    # print a page of statistics per stored episode into the learner's log
    from limbic.contracts import ActionSpec, Observation
    from limbic.data.writer import DatasetLayout, EpisodeWriter

    spec = ActionSpec("ee_delta", ("dx", "gripper"), np.array([-1.0, 0.0]), np.array([1.0, 1.0]))
    layout = DatasetLayout(("front",), (32, 32), ("q",), spec, 10, "sim")
    with EpisodeWriter(tmp_path / "d", layout, vcodec="h264", parallel_encoding=False) as writer:
        for _ in range(3):
            for t in range(4):
                obs = Observation(
                    t,
                    {"front": np.zeros((32, 32, 3), np.uint8)},
                    np.zeros(1, np.float32),
                    "go",
                    "e",
                    t,
                )
                writer.add_step(obs, np.zeros(2, np.float32))
            writer.save_episode()
        assert writer.episodes_saved == 3
    assert "libx264" not in capfd.readouterr().err


def test_a_dataset_recorded_in_av1_takes_h264_episodes_on_resume_and_reads_back(tmp_path):
    # a learner resumed from a run made before `learner.vcodec` appends H.264 to AV1 episodes
    from limbic.contracts import ActionSpec, Observation
    from limbic.data.writer import DatasetLayout, EpisodeWriter

    spec = ActionSpec("ee_delta", ("dx", "gripper"), np.array([-1.0, 0.0]), np.array([1.0, 1.0]))
    layout = DatasetLayout(("front",), (32, 32), ("q",), spec, 10, "sim")
    for vcodec in ("libsvtav1", "h264"):
        with EpisodeWriter(
            tmp_path / "d", layout, vcodec=vcodec, resume=True, parallel_encoding=False
        ) as writer:
            for t in range(5):
                image = np.full((32, 32, 3), 40 * (t + 1), np.uint8)
                obs = Observation(t, {"front": image}, np.zeros(1, np.float32), "go", "e", t)
                writer.add_step(obs, np.zeros(2, np.float32))
            writer.save_episode()
    episodes = load_episodes(tmp_path / "d")
    assert len(episodes) == 2
    for ep in episodes:  # lossy codecs: within a few grey levels of 40, 80, ..., 200
        means = ep.images["front"].reshape(5, -1).mean(axis=1)
        np.testing.assert_allclose(means, 40.0 * np.arange(1, 6), atol=3.0)


def _thread_policies() -> list[int]:
    out = []
    for tid in os.listdir("/proc/self/task"):
        try:
            out.append(os.sched_getscheduler(int(tid)))
        except ProcessLookupError:  # the thread ended meanwhile
            pass
    return out


def test_an_intervention_episode_splits_into_the_humans_steps_and_the_policys(learner, tmp_path):
    """The steps a human took go to the intervention partition, the rest to online; a resumed
    learner rebuilds the same split from the store."""
    learner.setup()
    up = online_upload(learner, 0)
    t = len(up.action)
    up.source = "intervention"
    up.intervention[:] = np.arange(t) % 2 == 1
    learner.ingest(up)
    sizes = {k: p.size for k, p in learner.replay.partitions.items()}
    assert sizes["intervention"] == t // 2 and sizes["online"] == t - t // 2
    # the learning curve's human share counts the actors' steps
    assert (learner.played_steps, learner.human_steps) == (t, t // 2)
    learner.checkpoint()
    learner.store.close()
    again = AsyncLearner(learner_config(tmp_path), threading.Event())
    try:
        again.setup()
        assert {k: p.size for k, p in again.replay.partitions.items()} == sizes
        assert (again.played_steps, again.human_steps) == (t, t // 2)
        a, b = learner.replay.partitions["intervention"], again.replay.partitions["intervention"]
        np.testing.assert_array_equal(a.action[: a.size], b.action[: b.size])
    finally:
        again.store.close()
        again.close()


def rebuilt_partitions(cfg: LearnerConfig) -> tuple[dict[str, int], int]:
    """A resumed learner's replay partition sizes, and the demonstrations stored on disk."""
    again = AsyncLearner(cfg, threading.Event())
    try:
        again.setup()
        sizes = {name: p.size for name, p in again.replay.partitions.items()}
        return sizes, again.store.count("demo")
    finally:
        again.store.close()
        again.close()


def test_self_imitation_copies_rewarded_online_episodes_and_again_on_resume(tmp_path):
    """``imitate_successes``: an online upload with task reward is also a demonstration to the
    BC term; one without is not; a resumed learner rebuilds the same partitions from disk."""
    cfg = learner_config(tmp_path, imitate_successes=True)
    first = AsyncLearner(cfg, threading.Event())
    try:
        first.setup()
        demo, online = first.replay.partitions["demo"], first.replay.partitions["online"]
        demo_steps = demo.size
        failed, won = online_upload(first, 0), online_upload(first, 1)
        failed.reward[:] = 0.0
        won.reward[:] = 0.0
        won.reward[-1] = 1.0  # the task's success on the last step
        first.ingest(failed)
        assert demo.size == demo_steps and online.size == len(failed.action)
        first.ingest(won)
        assert demo.size == demo_steps + len(won.action) and first.imitated == 1
        assert online.size == len(failed.action) + len(won.action)
        sizes = {name: p.size for name, p in first.replay.partitions.items()}
        first.checkpoint()
    finally:
        first.store.close()
        first.close()
    rebuilt, stored_demos = rebuilt_partitions(cfg)
    assert rebuilt == sizes
    assert stored_demos == 2  # the copy lives in the replay, not on disk


def test_assisted_imitation_copies_the_finish_of_a_rewarded_intervention_episode(tmp_path):
    """``imitate_assisted``: an upload a human stepped into, with task reward, also gives the
    demonstrations its steps after the human's last hand-back; without reward it gives none; a
    resumed learner rebuilds the same partitions from disk."""
    cfg = learner_config(tmp_path, imitate_successes=True, imitate_assisted=True)
    first = AsyncLearner(cfg, threading.Event())
    try:
        first.setup()
        demo = first.replay.partitions["demo"]
        demo_steps = demo.size
        failed, won = online_upload(first, 0), online_upload(first, 1)
        for up in (failed, won):
            up.source = "intervention"
            up.reward[:] = 0.0
            up.intervention[:] = False
            up.intervention[1] = True  # the human took step 1 and handed back
        won.reward[-1] = 1.0
        first.ingest(failed)
        assert demo.size == demo_steps and first.assisted == 0
        first.ingest(won)
        t = len(won.action)
        assert demo.size == demo_steps + t - 2 and first.assisted == 1
        assert first.imitated == 0
        sizes = {name: p.size for name, p in first.replay.partitions.items()}
        first.checkpoint()
    finally:
        first.store.close()
        first.close()
    assert rebuilt_partitions(cfg)[0] == sizes


def test_goal_moved_demo_copies_are_stored_as_their_own_episodes_with_the_demos_seed(tmp_path):
    cfg = learner_config(
        tmp_path, robot=robot_config(step_limit=5, task="pick_place"), demos=2, demo_goal_moves=1
    )
    lrn = AsyncLearner(cfg, threading.Event())
    try:
        lrn.setup()
        records = [r for r in lrn.store.records if r["source"] == "demo"]
        assert [r["episode_id"] for r in records] == [
            "demo-000000",
            "demo-000001-goal-moved",
            "demo-000002",
            "demo-000003-goal-moved",
        ]
        seeds = [r["seed"] for r in records]
        assert seeds[0] == seeds[1] and seeds[2] == seeds[3] and seeds[0] != seeds[2]
        frames = load_episodes(lrn.out / "datasets" / "demo")
        assert len(frames) == 4
        original, copy = frames[0], frames[1]
        np.testing.assert_array_equal(original.action, copy.action)
        view = next(iter(original.images))
        assert not np.array_equal(original.images[view][0], copy.images[view][0])
    finally:
        if lrn.store is not None:
            lrn.store.close()
        lrn.close()
