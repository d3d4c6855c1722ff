"""A fleet of simulated actor loops on a local Ray instance, against a live inference server and
a learner endpoint on loopback (the same ZeroMQ protocol as hand-started actors)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import ray
from runtime_helpers import RecordingLearner, SimPolicy, robot_config, serving

from limbic.launch.config import ConfigError
from limbic.runtime.actor import ActorConfig
from limbic.runtime.fleet import ActorFleet, FleetConfig, FleetError, FleetSettings, run_fleet
from limbic.runtime.outbox import OutboxConfig

FAST_OUTBOX = OutboxConfig(dead_after_s=1.0, status_interval_s=0.1)


def fleet_config(tmp_path, server: str, learner: str, **fleet) -> FleetConfig:
    return FleetConfig(
        actor_id="sim",
        robot=robot_config(step_limit=3),
        server=server,
        learner=learner,
        control_hz=20.0,
        seed=500,
        out_dir=str(tmp_path / "actors"),
        outbox=FAST_OUTBOX,
        episodes=fleet.pop("episodes", 2),
        fleet=FleetSettings(**{"size": 2, "seed_stride": 1000, "stop_timeout_s": 30, **fleet}),
    )


def test_members_get_their_own_ids_and_seeds():
    cfg = FleetConfig(actor_id="lab", seed=7, episodes=5, fleet=FleetSettings(size=3))
    members = [cfg.member(k) for k in range(3)]
    assert [m.actor_id for m in members] == ["lab-0", "lab-1", "lab-2"]
    assert [m.seed for m in members] == [7, 100_007, 200_007]
    assert all(type(m) is ActorConfig and m.episodes == 5 for m in members)
    with pytest.raises(ConfigError, match="fleet.size"):
        cfg.member(3)
    with pytest.raises(ConfigError, match="fleet.placement"):
        FleetSettings(placement="anywhere")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module (the fleets here join it and leave it running)."""
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_fleet_runs_its_budget_and_every_episode_reaches_the_learner(tmp_path, local_ray):
    learner = RecordingLearner()
    try:
        with serving(SimPolicy(), version=2) as server:
            cfg = fleet_config(tmp_path, server.endpoint, learner.endpoint)
            reports = run_fleet(cfg)
        ids = [r.actor_id for r in reports]
        assert ids == ["sim-0", "sim-1"]
        for r in reports:
            assert r.episodes == 2 and r.acked == 2 and r.unacked == 0 and not r.interrupted
        expected = {f"sim-{k}-{i:06d}" for k in range(2) for i in range(2)}
        assert set(learner.episodes) == expected
        # each member reset its scenes from its own seeds
        seeds = {i: learner.episodes[i].seed for i in expected}
        assert seeds == {f"sim-{k}-{i:06d}": 500 + 1000 * k + i for k in range(2) for i in range(2)}
        assert all((ep.policy_version == 2).all() for ep in learner.episodes.values())
    finally:
        learner.close()


@pytest.mark.slow
def test_a_running_fleet_stops_cleanly_and_reports(tmp_path, local_ray):
    learner = RecordingLearner()
    try:
        with serving(SimPolicy()) as server:
            cfg = fleet_config(tmp_path, server.endpoint, learner.endpoint, episodes=0)
            fleet = ActorFleet(cfg).start()
            try:
                assert {m.pid for m in fleet.members} and all(m.node for m in fleet.members)
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:  # until both members delivered something
                    actors = {ep.actor for ep in list(learner.episodes.values())}
                    if actors == {"sim-0", "sim-1"}:
                        break
                    time.sleep(0.1)
                assert actors == {"sim-0", "sim-1"}
            finally:
                reports = fleet.stop()
        assert [r.actor_id for r in reports] == ["sim-0", "sim-1"]
        assert all(r.interrupted and r.episodes >= 1 for r in reports)
        assert sum(r.episodes for r in reports) >= len(learner.episodes) >= 2
        # the members are gone: their CPUs are free for the next fleet
        deadline = time.monotonic() + 30
        while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ray.available_resources().get("CPU", 0) == 2
    finally:
        learner.close()


@pytest.mark.slow
def test_a_fleet_the_cluster_cannot_hold_fails_to_start_with_the_reason(tmp_path, local_ray):
    # members asking for 3 CPUs each never fit a 2-CPU instance
    cfg = fleet_config(
        tmp_path, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", cpus_per_actor=3, start_timeout_s=2
    )
    fleet = ActorFleet(cfg)
    with pytest.raises(
        FleetError,
        match=r"2 of 2 fleet members not running .*sim-0, sim-1.*3 CPUs and 0 GPUs.*CPUs free",
    ):
        fleet.start()
    assert ray.is_initialized()  # a Ray instance the fleet joined stays up
    assert fleet.reports() == [] and all(m.result is None for m in fleet.members)


def test_loopback_endpoints_are_refused_on_a_cluster_of_several_nodes(monkeypatch, tmp_path):
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": True}])
    cfg = fleet_config(tmp_path, "tcp://127.0.0.1:5555", "tcp://10.0.0.5:5557")
    with pytest.raises(FleetError, match="config server: 'tcp://127.0.0.1:5555' is a loopback"):
        ActorFleet(cfg)._check_reachable()
    cfg = fleet_config(tmp_path, "tcp://10.0.0.5:5555", "tcp://10.0.0.5:5557")
    ActorFleet(cfg)._check_reachable()  # routable addresses pass


@pytest.mark.slow
def test_limbic_fleet_runs_until_sigterm_then_reports_and_leaves_no_ray_behind(tmp_path):
    learner = RecordingLearner()
    try:
        with serving(SimPolicy()) as server:
            cmd = [
                sys.executable, "-m", "limbic.launch.fleet",
                "fleet.size=2", "fleet.local_cpus=2", "episodes=0", "task=reach",
                "robot.sim.step_limit=3", "robot.sim.camera.height=64", "robot.sim.camera.width=64",
                "control_hz=20", "outbox.dead_after_s=1", "outbox.status_interval_s=0.1",
                f"server={server.endpoint}",
                f"learner={learner.endpoint}",
                f"out_dir={tmp_path / 'actors'}",
            ]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                start_new_session=True,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and proc.poll() is None:
                    if {ep.actor for ep in list(learner.episodes.values())} == {"sim-0", "sim-1"}:
                        break
                    time.sleep(0.2)
                assert proc.poll() is None, proc.communicate()[0][-3000:]
                proc.send_signal(signal.SIGTERM)
                out, _ = proc.communicate(timeout=90)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.communicate()
        assert proc.returncode == 0, out[-3000:]
        assert "fleet: 2 of 2 actors reported" in out, out[-3000:]
        for k in range(2):
            assert f"sim-{k}: " in out
        # the local Ray instance went down with the launcher: nothing of its session is left
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)
    finally:
        learner.close()
