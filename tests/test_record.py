"""Recording: LeRobotDataset round trip, interruption safety, CLI errors."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from limbic.data import schema
from limbic.data.writer import DatasetLayout, EpisodeWriter, read_limbic_episodes
from limbic.launch.components import OperatorConfig, RobotConfig
from limbic.launch.config import ConfigError, to_object
from limbic.launch.record import DatasetConfig, RecordConfig, record
from limbic.sim.env import SimConfig
from limbic.sim.expert import ExpertConfig


def open_dataset(root: Path) -> LeRobotDataset:
    return LeRobotDataset("limbic/test", root=root, video_backend="pyav")


def test_record_round_trip_through_lerobot(tmp_path):
    root = tmp_path / "demo"
    cfg = RecordConfig(
        robot=RobotConfig(sim=SimConfig(arm="so101", task="pick_place")),
        operator=OperatorConfig(expert=ExpertConfig()),
        dataset=DatasetConfig(root=str(root)),
        episodes=3,
        seed=10,
        progress=False,
    )
    summary = record(cfg)
    assert summary.episodes == 3 and summary.successes == 3 and not summary.interrupted

    ds = open_dataset(root)
    assert ds.num_episodes == 3 and ds.num_frames == summary.steps
    assert ds.meta.robot_type == "sim_so101"
    assert set(ds.meta.camera_keys) == {"observation.images.front", "observation.images.wrist"}
    assert ds.meta.features[schema.STATE]["names"] == [
        "shoulder_pan",
        "shoulder_lift",
        "elbow_flex",
        "wrist_flex",
        "wrist_roll",
        "gripper",
    ]

    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=False)
    frames, last_success = 0, []
    for batch in loader:
        frames += batch[schema.ACTION].shape[0]
        assert batch["observation.images.front"].shape[1:] == (3, 128, 128)
        assert batch["observation.images.wrist"].dtype == torch.float32
        assert batch[schema.STATE].shape[1] == 6
        assert all(isinstance(t, str) and "bowl" in t for t in batch["task"])
        ends = batch[schema.DONE].flatten()
        last_success += batch[schema.SUCCESS].flatten()[ends].tolist()
    assert frames == ds.num_frames
    assert last_success == [True, True, True]  # every episode ends on its success step

    records = read_limbic_episodes(root)
    assert [r["seed"] for r in records] == [10, 11, 12]
    assert all(
        r["success"] and r["mode"] == "expert" and r["task"] == "pick_place" for r in records
    )
    assert records[0]["instruction"] == ds[0]["task"]
    # the goal: the cube's colour, which the instruction names in whatever phrasing
    for r in records:
        assert set(r["goal"]) == {"cube"} and f"{r['goal']['cube']} " in r["instruction"]


def test_settle_steps_record_the_finished_task_after_success(tmp_path):
    """With settle steps an episode goes on past its success step; the steps after it are
    successes, only the last one is done, and the dataset reads back through LeRobot."""

    def run(root: Path, settle: int):
        cfg = RecordConfig(
            robot=RobotConfig(sim=SimConfig(arm="so101", task="reach")),
            operator=OperatorConfig(expert=ExpertConfig()),
            dataset=DatasetConfig(root=str(root), use_videos=False),
            episodes=2,
            seed=3,
            progress=False,
            settle_steps=settle,
        )
        record(cfg)
        ds = open_dataset(root)
        eps = np.asarray([int(e) for e in ds.hf_dataset["episode_index"]])
        success = np.asarray([bool(x) for x in ds.hf_dataset[schema.SUCCESS]])
        done = np.asarray([bool(x) for x in ds.hf_dataset[schema.DONE]])
        return eps, success, done

    eps0, success0, done0 = run(tmp_path / "plain", 0)
    eps5, success5, done5 = run(tmp_path / "settled", 5)
    for e in (0, 1):
        plain, settled = eps0 == e, eps5 == e
        assert settled.sum() == plain.sum() + 5  # same seed, same success step, five more frames
        assert done0[plain].tolist() == [False] * (plain.sum() - 1) + [True]
        assert done5[settled].tolist() == [False] * (settled.sum() - 1) + [True]
        assert success5[settled][-6:].all()  # the task still holds while the arm backs off
    assert all(r["success"] for r in read_limbic_episodes(tmp_path / "settled"))
    with pytest.raises(ConfigError, match="settle_steps"):
        RecordConfig(settle_steps=-1)


@pytest.mark.parametrize("task", ["reach", "push"])
def test_settling_frames_are_done_frames_whichever_way_it_is_sized(tmp_path, task):
    """Every frame that shows the finished task is done to the critic's labels, whether the
    settling is sized by ``settle_share=0.05`` or fixed at 8 steps, on a task done in a few
    steps (reach) and one done in tens (push); a done frame before it lies in the last 5 % of
    the task. Labelled over the whole recording instead (``finish_at_success=False``), a fixed
    8 settle steps labels finished reach frames "not done", which ``settle_share`` avoids."""
    from limbic.critic.labels import done_labels, finished_frame
    from limbic.data.reader import load_episodes

    def episodes(root: Path, **settle):
        cfg = RecordConfig(
            robot=RobotConfig(sim=SimConfig(arm="so101", task=task)),
            operator=OperatorConfig(expert=ExpertConfig()),
            dataset=DatasetConfig(root=str(root), use_videos=False),
            episodes=2,
            seed=5,
            progress=False,
            **settle,
        )
        record(cfg)
        return load_episodes(root)

    recorded = {
        "share": episodes(tmp_path / "share", settle_share=0.05),
        "fixed": episodes(tmp_path / "fixed", settle_steps=8),
    }
    for eps in recorded.values():
        for ep in eps:
            assert ep.succeeded and ep.success[-1]
            end = finished_frame(ep)
            assert end == int(np.argmax(ep.success)) + 1  # the frame after the success step
            finished = np.arange(len(ep)) >= end
            label, labelled = done_labels(ep)
            assert label[finished].all() and labelled[finished].all()
            early = label.astype(bool) & ~finished
            assert np.all(np.flatnonzero(early) >= 0.95 * end - 1e-9)
    whole = {}
    for name, eps in recorded.items():
        whole[name] = 0
        for ep in eps:
            finished = np.arange(len(ep)) >= finished_frame(ep)
            label, labelled = done_labels(ep, finish_at_success=False)
            whole[name] += int((labelled & (label == 0) & finished).sum())
    assert whole["share"] == 0
    if task == "reach":
        assert whole["fixed"] > 0
    with pytest.raises(ConfigError, match="settle_share"):
        RecordConfig(settle_share=0.5)


def test_simulated_recordings_store_the_true_progress_of_every_frame(tmp_path):
    """With ``task_progress=true`` a simulated recording stores the task's true progress per
    frame: it reads back as the critic's progress labels, starts at 0, is 1 on the frames that
    show the task done and stays short of that on a failure; by default there is no feature."""
    from limbic.critic.labels import episode_progress
    from limbic.data.reader import load_episodes
    from limbic.sim.tasks import SHORT_OF_SUCCESS

    def run(root: Path, expert: ExpertConfig, **extra):
        record(
            RecordConfig(
                robot=RobotConfig(sim=SimConfig(arm="so101", task="pick_place")),
                operator=OperatorConfig(expert=expert),
                dataset=DatasetConfig(root=str(root), use_videos=False),
                episodes=1,
                seed=7,
                progress=False,
                settle_steps=3,
                **{"task_progress": True, **extra},
            )
        )
        return load_episodes(root)

    (ok,) = run(tmp_path / "ok", ExpertConfig())
    phi = ok.metadata["progress"]
    assert ok.succeeded and phi.shape == (len(ok),) and phi[0] == 0.0
    # frame t shows the state before action t; success[t] is the state after it
    shown_done = np.append(False, ok.success[:-1])
    assert np.all(phi[shown_done] == 1.0) and np.all(phi[~shown_done] <= SHORT_OF_SUCCESS)
    assert phi[np.argmax(shown_done) - 1] > 0.7  # the approach, grasp and carry all count
    np.testing.assert_array_equal(episode_progress(ok), phi)
    assert ok.metadata["task"] == "pick_place" and set(ok.metadata["goal"]) == {"cube"}

    (failed,) = run(tmp_path / "failed", ExpertConfig(p_fail=1.0))
    assert not failed.succeeded
    phi = failed.metadata["progress"]
    assert 0.2 < phi.max() <= SHORT_OF_SUCCESS  # it got somewhere, never to the end
    assert episode_progress(failed) is not None  # a failure now has progress labels
    assert episode_progress(failed, stored=False) is None  # the ablation ignores them

    (plain,) = run(tmp_path / "plain", ExpertConfig(), task_progress=RecordConfig.task_progress)
    assert "progress" not in plain.metadata


def test_a_progress_dataset_refuses_frames_without_it(tmp_path):
    """A layout with ``task_progress`` needs it on every frame, in [0, 1]; one without refuses it."""
    from limbic.contracts import ContractError
    from limbic.sim.env import SimEnv

    env = SimEnv(SimConfig(task="reach"))
    try:
        obs = env.reset(seed=0)
        layout = DatasetLayout(
            views=env.views,
            image_hw=env.cfg.camera.image_hw,
            state_names=env.state_names,
            action_spec=env.action_spec,
            fps=10,
            robot_type="sim_so101",
            task_progress=True,
        )
        action = np.zeros(env.action_spec.dim, np.float32)
        with EpisodeWriter(tmp_path / "p", layout, use_videos=False) as writer:
            with pytest.raises(ContractError, match="task_progress"):
                writer.add_step(obs, action)
            with pytest.raises(ContractError, match=r"task_progress.*\[0, 1\]"):
                writer.add_step(obs, action, task_progress=1.5)
            writer.add_step(obs, action, task_progress=0.25)
            writer.save_episode()
        plain = dataclasses.replace(layout, task_progress=False)
        with EpisodeWriter(tmp_path / "q", plain, use_videos=False) as writer:
            with pytest.raises(ContractError, match="no task_progress"):
                writer.add_step(obs, action, task_progress=0.25)
    finally:
        env.close()


def test_recorded_actions_match_what_was_sent(tmp_path):
    """Frames decode back to what the robot saw and did (video is lossy; state/action are exact)."""
    from limbic.sim.operator import ScriptedOperator
    from limbic.sim.robot import SimRobot

    robot = SimRobot(SimConfig(task="push"))
    with robot:
        env = robot.env
        layout = DatasetLayout(
            env.views, (128, 128), env.state_names, env.action_spec, 10, "sim_so101"
        )
        writer = EpisodeWriter(tmp_path / "d", layout, use_videos=False)
        obs = robot.start_episode(seed=0)
        op = ScriptedOperator(robot)
        op.on_episode_start()
        sent, states, fronts = [], [], []
        for _ in range(5):
            a = robot.send_action(op.get_action(obs))
            writer.add_step(obs, a)
            sent.append(a)
            states.append(obs.state)
            fronts.append(obs.images["front"])
            obs = robot.get_observation()
        writer.save_episode()
        writer.finalize()
    ds = open_dataset(tmp_path / "d")
    for i in range(5):
        item = ds[i]
        np.testing.assert_array_equal(item[schema.ACTION].numpy(), sent[i])
        np.testing.assert_array_equal(item[schema.STATE].numpy(), states[i])
        img = (
            (item["observation.images.front"].permute(1, 2, 0).numpy() * 255)
            .round()
            .astype(np.uint8)
        )
        np.testing.assert_array_equal(img, fronts[i])  # PNG frames are lossless


def test_saved_episodes_survive_a_hard_kill(tmp_path):
    """What a SIGKILL leaves behind between episodes (no finalize) is still a readable dataset."""
    from limbic.sim.operator import ScriptedOperator
    from limbic.sim.robot import SimRobot
    from limbic.teleop.record import record_episodes

    root = tmp_path / "d"
    robot = SimRobot(SimConfig(task="reach"))
    with robot:
        env = robot.env
        layout = DatasetLayout(
            env.views, (128, 128), env.state_names, env.action_spec, 10, "sim_so101"
        )
        writer = EpisodeWriter(root, layout)
        op = ScriptedOperator(robot)
        writer.finalize = lambda: None  # simulate dying before any finalisation
        record_episodes(robot, op, writer, episodes=2, progress=False)
        snapshot = tmp_path / "snapshot"
        shutil.copytree(root, snapshot)
    ds = open_dataset(snapshot)
    assert ds.num_episodes == 2
    assert len(ds[ds.num_frames - 1]["task"]) > 0


def _start_record(root: Path, episodes: int) -> subprocess.Popen:
    env = {**os.environ, "MUJOCO_GL": "egl", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "limbic.launch.record",
        f"episodes={episodes}",
        f"dataset.root={root}",
        "task=reach",
        "progress=false",
    ]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for_episodes(root: Path, n: int, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(read_limbic_episodes(root)) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"recorder exited early:\n{proc.stdout.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("recorder saved no episodes in time")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_recording_leaves_saved_episodes_readable(tmp_path, sig):
    root = tmp_path / "rec"
    proc = _start_record(root, episodes=500)
    try:
        _wait_for_episodes(root, 2, proc)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out
    assert "recording interrupted" in out
    saved = read_limbic_episodes(root)
    ds = open_dataset(root)
    assert 2 <= ds.num_episodes == len(saved) < 500
    assert ds.num_frames == sum(r["length"] for r in saved)
    ds[ds.num_frames - 1]  # the last saved frame decodes


def test_cli_rejects_bad_config_naming_the_key(tmp_path):
    env = {**os.environ, "MUJOCO_GL": "egl"}
    for override, key in (
        ("robot.sim.arm=ur5", "robot.sim.arm"),
        ("episodes=0", "episodes"),
        ("episodes=many", "episodes"),
    ):
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "limbic.launch.record",
                override,
                f"dataset.root={tmp_path / 'x'}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode != 0, res.stdout + res.stderr
        assert key in res.stderr
    assert not (tmp_path / "x").exists()


def test_existing_dataset_is_not_overwritten(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("precious")
    cfg = RecordConfig(dataset=DatasetConfig(root=str(tmp_path / "d")), episodes=1, progress=False)
    with pytest.raises(FileExistsError, match="already exists"):
        record(cfg)
    assert (tmp_path / "d" / "keep.txt").read_text() == "precious"


def test_typed_config_rejects_unknown_keys():
    with pytest.raises(ConfigError) as e:
        to_object({"robot": {"sim": {"arms": "so101"}}}, RecordConfig)
    assert e.value.key == "robot.sim.arms"
    assert json.dumps({"ok": True})


_CUT_SAVE_CHILD = r"""
import json, os, signal, sys
from pathlib import Path
import numpy as np
import lerobot.datasets.lerobot_dataset as lds
from limbic.contracts import ActionKind, ActionSpec, Observation
from limbic.data.writer import DatasetLayout, EpisodeWriter

root, point, use_videos = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
layout = DatasetLayout(
    ("front",), (32, 32), ("a", "b"),
    ActionSpec(ActionKind.EE_DELTA, ("dx", "gripper"), np.array([-1, 0]), np.array([1, 1])),
    10, "test",
)
writer = EpisodeWriter(root, layout, use_videos=use_videos, parallel_encoding=False)
rng = np.random.default_rng(0)

def episode(k):
    for t in range(4):
        obs = Observation(
            timestamp_ns=t, images={"front": rng.integers(0, 255, (32, 32, 3), np.uint8)},
            state=np.array([k, t], np.float32), instruction=f"task {k}", episode_id=f"e{k}", step=t,
        )
        writer.add_step(obs, np.array([0.5, 0.0], np.float32), done=t == 3)
    writer.save_episode({"episode_id": f"e{k}"})

episode(0)
episode(1)
if point == "info":  # killed while LeRobot rewrites info.json, its metadata parquet still open
    def cut(info, local_dir):
        text = json.dumps(info).encode()
        with open(Path(local_dir) / "meta" / "info.json", "wb") as f:
            f.write(text[: len(text) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    lds.write_info = cut
else:  # killed once the frames are written, before any metadata
    lds.LeRobotDatasetMetadata.save_episode = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
episode(2)
"""


@pytest.mark.parametrize("point,use_videos", [("info", False), ("data", False), ("info", True)])
def test_a_save_cut_by_a_hard_kill_is_rolled_back_and_the_episode_saved_again(
    tmp_path, point, use_videos
):
    from limbic.contracts import ActionKind, ActionSpec, Observation
    from limbic.data.writer import CRASHED, SAVING

    root = tmp_path / "d"
    child = subprocess.run(
        [sys.executable, "-c", _CUT_SAVE_CHILD, str(root), point, "1" if use_videos else "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert (root / SAVING).is_file()  # the save was cut short
    layout = DatasetLayout(
        ("front",),
        (32, 32),
        ("a", "b"),
        ActionSpec(ActionKind.EE_DELTA, ("dx", "gripper"), np.array([-1, 0]), np.array([1, 1])),
        10,
        "test",
    )
    writer = EpisodeWriter(root, layout, use_videos=use_videos, resume=True)
    assert writer.total_episodes == 2  # the two complete episodes, nothing of the third
    assert not (root / SAVING).exists() and any((root / CRASHED).rglob("*.parquet"))
    for t in range(4):
        obs = Observation(
            timestamp_ns=t,
            images={"front": np.full((32, 32, 3), 7, np.uint8)},
            state=np.array([2, t], np.float32),
            instruction="task 2",
            episode_id="e2",
            step=t,
        )
        writer.add_step(obs, np.array([0.5, 0.0], np.float32), done=t == 3)
    assert writer.save_episode({"episode_id": "e2"}) == 2
    writer.finalize()
    ds = open_dataset(root)
    assert ds.num_episodes == 3 and ds.num_frames == 12
    assert [float(ds[i][schema.STATE][0]) for i in (0, 4, 8)] == [0.0, 1.0, 2.0]
    assert [r["episode_id"] for r in read_limbic_episodes(root)] == ["e0", "e1", "e2"]


def test_a_held_out_recording_says_so_and_names_its_goal(tmp_path):
    """The split set in the robot's config is the one recorded, and each episode's goal is what
    its instruction names (a held-out phrasing and colours here)."""
    from limbic.sim.tasks import HELDOUT_COLORS

    root = tmp_path / "heldout"
    record(
        RecordConfig(
            robot=RobotConfig(sim=SimConfig(arm="so101", task="reach", split="heldout")),
            operator=OperatorConfig(expert=ExpertConfig()),
            dataset=DatasetConfig(root=str(root), use_videos=False),
            episodes=2,
            seed=100000,
            progress=False,
        )
    )
    records = read_limbic_episodes(root)
    assert [r["split"] for r in records] == ["heldout", "heldout"]
    for r in records:
        assert set(r["goal"]) == {"target"}  # the distractor is no part of the goal
        assert f"{r['goal']['target']} " in r["instruction"]
    assert any(r["goal"]["target"] in HELDOUT_COLORS for r in records)
