"""limbic-train's processes end to end: crashes lose nothing, Ctrl-C shuts down cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from runtime_helpers import robot_config
from serving import wait_until

from limbic.data.reader import load_episodes
from limbic.data.writer import read_limbic_episodes
from limbic.launch.compose import load_or_compose, write_config
from limbic.policy.rlpd import AgentConfig
from limbic.policy.vla import PolicyConfig
from limbic.runtime.actor import ActorConfig
from limbic.runtime.learner import LearnerConfig
from limbic.runtime.outbox import OutboxConfig
from limbic.runtime.priority import autogroup_nice
from limbic.runtime.server import ServeConfig
from limbic.runtime.supervisor import ActorSettings, TrainConfig, TrainJob

TINY = AgentConfig(
    d_model=16, n_queries=1, feature_dim=32, hidden=32, n_q=2, q_subset=2, critic_warmup=0
)
OVERRIDES = [
    "task=reach",
    "demos=2",
    "bc_pretrain_steps=3",
    "batch_size=8",
    "eval_episodes=1",
    "eval_every=100",
    "videos=0",
    "policy.backbone=small_cnn",
    "robot.sim.camera.height=64",
    "robot.sim.camera.width=64",
    "policy.image_hw=[64,64]",
    "robot.sim.step_limit=6",
    "policy.agent.d_model=16",
    "policy.agent.n_queries=1",
    "policy.agent.feature_dim=32",
    "policy.agent.hidden=32",
    "policy.agent.n_q=2",
    "use_videos=false",
    "publish_every=2",
    "checkpoint_every=2",
    "actor.control_hz=20",
    "actor.outbox.memory_episodes=0",
    "actor.outbox.dead_after_s=1.0",
    "actor.outbox.status_interval_s=0.2",
]


def small_train_config(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(
        robot=robot_config(step_limit=6),
        policy=PolicyConfig(backbone="small_cnn", image_hw=(64, 64), agent=TINY),
        demos=2,
        online_episodes=6,
        batch_size=8,
        bc_pretrain_steps=3,
        eval_every=100,
        eval_episodes=1,
        videos=0,
        out_dir=str(tmp_path / "run"),
        use_videos=False,
        publish_every=2,
        checkpoint_every=2,
        actors=2,
        actor=ActorSettings(
            control_hz=10.0,
            outbox=OutboxConfig(memory_episodes=0, dead_after_s=1.0, status_interval_s=0.2),
        ),
        stop_timeout_s=60.0,
    )
    return TrainConfig(**{**base, **kw})


def status(out: Path) -> dict:
    try:
        return json.loads((out / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def replay_index(out: Path) -> list[dict]:
    return [
        json.loads(line)
        for line in (out / "replay" / "index.jsonl").read_text().splitlines()
        if line
    ]


def test_the_job_writes_a_config_per_process_that_each_entry_point_reads_back(tmp_path):
    job = TrainJob(small_train_config(tmp_path, online_episodes=5, actors=3), threading.Event())
    configs = tmp_path / "run" / "configs"
    learner = load_or_compose("learner", ["--config", str(configs / "learner.yaml")], LearnerConfig)
    serve = load_or_compose("serve", ["--config", str(configs / "serve.yaml")], ServeConfig)
    actors = [
        load_or_compose("actor", ["--config", str(configs / f"actor-{k}.yaml")], ActorConfig)
        for k in range(3)
    ]
    assert learner.endpoint == job.learner_endpoint and not learner.endpoint.endswith(":0")
    assert serve.server.weights_endpoint == learner.weights_endpoint
    assert serve.policy.args["explore"] is True and serve.policy.args["path"].endswith("policy.pt")
    assert serve.policy.instruction_encoder.args == {}
    assert [a.episodes for a in actors] == [2, 2, 1] and len({a.seed for a in actors}) == 3
    assert all(a.server == serve.server.endpoint and a.learner == learner.endpoint for a in actors)


def test_explore_false_serves_the_deterministic_mean_to_the_actors(tmp_path):
    TrainJob(small_train_config(tmp_path, explore=False), threading.Event())
    serve = load_or_compose(
        "serve", ["--config", str(tmp_path / "run" / "configs" / "serve.yaml")], ServeConfig
    )
    assert serve.policy.args["explore"] is False


def test_the_job_refuses_a_layout_curriculum_its_actors_would_not_follow(tmp_path):
    with pytest.raises(ValueError, match="layout_focus.*runtime=inprocess"):
        small_train_config(tmp_path, layout_focus=0.5)
    assert small_train_config(tmp_path, layout_focus=0.5, runtime="inprocess").layout_focus == 0.5


def test_the_job_refuses_online_goal_moves_its_learner_could_not_render(tmp_path):
    pick = robot_config(step_limit=6, task="pick_place")
    with pytest.raises(ValueError, match="online_goal_moves.*runtime=inprocess"):
        small_train_config(tmp_path, robot=pick, online_goal_moves=2)
    job = small_train_config(tmp_path, robot=pick, online_goal_moves=2, runtime="inprocess")
    assert job.online_goal_moves == 2


@pytest.mark.slow
def test_killing_the_learner_and_an_actor_loses_no_episode_and_training_resumes(tmp_path):
    cfg = small_train_config(tmp_path, online_episodes=10)
    out = Path(cfg.out_dir)
    job = TrainJob(cfg, threading.Event())
    try:
        job.learner.start()
        wait_until(lambda: (out / "policy.pt").exists(), 180, "the learner's set-up")
        job.server.start()
        for actor in job.actors:
            actor.start()
        learner_pid = job.learner.proc.pid
        assert os.getpriority(os.PRIO_PROCESS, learner_pid) >= cfg.nice
        if autogroup_nice() is not None:  # its own session: the session's autogroup too
            group = Path(f"/proc/{learner_pid}/autogroup").read_text()
            assert int(group.split()[-1]) >= cfg.nice, group
        wait_until(
            lambda: status(out).get("episodes", 0) >= 2 and status(out).get("updates", 0) >= 2,
            180,
            "episodes and updates",
        )
        assert status(out)["episodes"] < 10  # mid-run
        job.actors[1].proc.send_signal(signal.SIGKILL)  # an actor dies: the others go on
        job.actors[1].wait(10)
        job.learner.proc.send_signal(signal.SIGKILL)  # the learner dies mid-run
        job.learner.wait(10)
        ckpt = torch.load(out / "policy.pt", map_location="cpu", weights_only=True)
        stored_before = {r["episode_id"] for r in replay_index(out)}
        write_config(job._learner_config(resume=True), job.learner.config)
        job.learner.start()
        wait_until(lambda: status(out).get("resumed") is not None, 180, "the learner to resume")
        resumed = status(out)["resumed"]
        assert resumed["online_updates"] == ckpt["learner"]["online_updates"]
        assert resumed["updates"] == ckpt["agent"]["updates"]
        assert resumed["checkpoint_replay_episodes"] == ckpt["learner"]["replay_episodes"]
        assert resumed["replay_episodes"] >= len(stored_before)
        job.actors[1].start()  # the killed actor comes back: re-sends its spooled episodes
        wait_until(lambda: status(out).get("finished"), 300, "the learner to finish")
        for actor in job.actors:
            assert actor.wait(120) and actor.returncode == 0, actor.tail()
        assert job.actors[0].restarts == 0
    finally:
        job.shutdown()
    index = replay_index(out)
    online = [r["episode_id"] for r in index if r["source"] == "online"]
    expected = {f"actor-{k}-{i:06d}" for k in range(2) for i in range(5)}
    assert sorted(online) == sorted(expected)  # every finished episode, exactly once
    in_dataset = [r["episode_id"] for r in read_limbic_episodes(out / "datasets" / "online")]
    assert sorted(in_dataset) == sorted(expected)
    assert len(load_episodes(out / "datasets" / "online")) == 10
    final = status(out)
    assert (
        final["finished"]
        and final["updates"]
        >= cfg.utd * sum(r["length"] for r in index if r["source"] == "online") - 1
    )


@pytest.mark.slow
def test_ctrl_c_stops_every_child_finalises_the_datasets_and_writes_a_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "limbic.launch.train",
        *OVERRIDES,
        "online_episodes=40",
        f"out_dir={out}",
        "progress=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: status(out).get("episodes", 0) >= 2 or proc.poll() is not None,
            240,
            "online episodes",
        )
        assert proc.poll() is None, proc.stdout.read()
        learner_pid = status(out)["pid"]
        interrupted_at = time.time()
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends to the job's group
        text, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, text
    assert "interrupted" in text and "resume with: limbic-train resume=true" in text
    with pytest.raises(ProcessLookupError):
        os.kill(learner_pid, 0)
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and str(out) in _cmdline(p)]
    assert not leftovers, "child processes outlived limbic-train"
    ckpt = torch.load(out / "policy.pt", map_location="cpu", weights_only=True)
    assert (out / "policy.pt").stat().st_mtime >= interrupted_at  # the last checkpoint, at shutdown
    index = replay_index(out)
    assert ckpt["learner"]["replay_episodes"] == len(index)
    online = [r for r in index if r["source"] == "online"]
    assert (
        len(load_episodes(out / "datasets" / "online")) == len(online) >= 2
    )  # finalised, readable
    final = status(out)
    assert not final["finished"] and final["phase"] == "stopping"


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_interventions_in_the_job_go_to_the_actors_not_the_learner(tmp_path):
    from limbic.sim.expert import ExpertConfig
    from limbic.teleop.arbiter import TakeoverConfig

    takeover = TakeoverConfig(threshold=0.4, patience=2, hold=5)
    job = TrainJob(
        small_train_config(
            tmp_path,
            interventions=True,
            takeover=takeover,
            demo_expert=ExpertConfig(jaw_gap_m=0.012),
        ),
        threading.Event(),
    )
    assert job._learner_config(resume=False).interventions is False
    actors = job._actor_configs()
    assert actors and all(a.arbiter == "scripted" and a.takeover == takeover for a in actors)
    # the watching human grasps where the demonstrator does
    assert all(a.watcher_jaw_gap_m == 0.012 for a in actors)
    plain = TrainJob(small_train_config(tmp_path), threading.Event())
    assert all(a.arbiter == "policy" for a in plain._actor_configs())
