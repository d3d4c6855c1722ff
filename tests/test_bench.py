"""Benchmarks run and end with their key=value line (figures are not asserted: no timing in tests)."""

import os
import re
import subprocess
import sys


def run_bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": "egl"}
    return subprocess.run(
        [sys.executable, "-m", "limbic.launch.bench", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_sim_benchmark_prints_its_summary_line():
    res = run_bench("sim", "--arms", "so101", "--steps", "50", "--block", "25", "--seeds", "2")
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"sim_ratio=\d+\.\d{3} so101_ratio=\d+\.\d{3} expert_min_success=\d\.\d\d", last
    ), last
    assert "pick_place" in res.stdout and "bare steps/s" in res.stdout


def test_unknown_benchmark_is_refused():
    res = run_bench("warp")
    assert res.returncode == 2 and "unknown benchmark 'warp'" in res.stderr


def test_wire_benchmark_prints_its_summary_line():
    res = run_bench(
        "wire", "--requests", "20", "--rounds", "1", "--seconds", "0.3", "--model-ms", "1"
    )
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert re.match(
        r"wire_overhead_ratio=\d+\.\d\d .*floor_ratio=\d+\.\d\d p50_ms=\d+\.\d{3} "
        r"echo_p50_ms=\d+\.\d{3} floor_p50_ms=\d+\.\d{3} .*batching_gain_8v1=\d",
        last,
    ), last
    assert "bare pyzmq echo (raw)" in res.stdout and "waits 1 ms first" in res.stdout


def test_learner_benchmark_prints_its_summary_line():
    res = run_bench("learner", "--updates", "3", "--batch-size", "32", "--threads", "1")
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"learner_updates_per_s=\d+\.\d baseline_updates_per_s=\d+\.\d sample_share=0\.\d{3}", last
    ), last


def test_train_benchmark_prints_its_summary_line(tmp_path):
    tiny = [
        "task=reach",
        "online_episodes=2",
        "demos=2",
        "bc_pretrain_steps=3",
        "eval_every=100",
        "eval_episodes=1",
        "batch_size=8",
        "policy.backbone=small_cnn",
        "robot.sim.camera.height=64",
        "robot.sim.camera.width=64",
        "policy.image_hw=[64,64]",
        "robot.sim.step_limit=5",
        "policy.agent.d_model=16",
        "policy.agent.n_queries=1",
        "policy.agent.feature_dim=32",
        "policy.agent.hidden=32",
        "policy.agent.n_q=2",
        "videos=0",
        "use_videos=false",
        "progress=false",
    ]
    res = run_bench("train", "--out", str(tmp_path / "bench"), *tiny)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    last = res.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"success=\d\.\d\d episodes=2 minutes=\d+\.\d weight_lag_s=(\d+\.\d{3}|nan) actor_hz=\d+\.\d\d "
        r"missed_ticks=\d+ acting_lag_updates=\d+ baseline_success=\d\.\d\d baseline_minutes=\d+\.\d",
        last,
    ), last
    assert "in-process baseline" in res.stdout and "actor-0:" in res.stdout


def test_priority_benchmark_prints_its_summary_line():
    res = run_bench("priority", "--seconds", "1.5", "--work-ms", "10", "--server-ms", "5")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[1:4]] == ["idle", "os_nice", "autogroup"]
    assert "autogroup niceness" in lines[3] or "no autogroup" in lines[3], lines[3]
    assert re.fullmatch(
        r"late_actions=\d+ missed_ticks=\d+ work_p99_ms=[\d.]+ learner_updates_per_s=[\d.]+ "
        r"baseline_late_actions=\d+ baseline_missed_ticks=\d+ baseline_work_p99_ms=[\d.]+ "
        r"baseline_learner_updates_per_s=[\d.]+ idle_late_actions=\d+ idle_work_p99_ms=[\d.]+",
        lines[-1],
    ), lines[-1]
    refused = run_bench("priority", "--work-ms", "60", "--server-ms", "30")
    assert refused.returncode == 2 and "do not fit" in refused.stderr
