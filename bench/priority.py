"""``limbic-bench priority``: control loops' tick timing beside a busy learner at lower priority.

``limbic-train`` starts every child in a session of its own. Under Linux's autogroup
scheduling a niced process in its own session still gets as much CPU as each actor; the
learner therefore also lowers its session's autogroup (:mod:`limbic.runtime.priority`). This
benchmark shows what that buys, with the actors' own :class:`~limbic.runtime.episode_buffer.TickClock`:

* ``--actors`` control loops (own sessions, 10 Hz). Each tick asks a server stand-in for an
  action and waits at most 80 % of the period for it, as the actors do (a late one is dropped
  and the tick held), then does a fixed amount of CPU work (``--work-ms`` on an idle machine,
  the order of a simulated tick: step and render);
* the server stand-in (own session): one request at a time over ZeroMQ on loopback, each
  ``--server-ms`` of CPU work (policy and critic);
* a learner stand-in (own session): a small MLP trained flat out on every core, as the
  learner's updates are.

Three arms, one after another in the same run: ``idle`` (no learner, the floor),
``os_nice`` (the learner only ``os.nice(10)``: the baseline), and ``autogroup`` (the learner
calls :func:`~limbic.runtime.priority.lower_priority`, as ``limbic-learner`` does). For each:
the actions' round trips and the ticks' work time (median, 99th percentile), late actions, how
late ticks began (99th percentile, worst), missed ticks, and the learner's updates per second.
The last line is ``late_actions=... missed_ticks=... work_p99_ms=... learner_updates_per_s=...
baseline_late_actions=... baseline_missed_ticks=... baseline_work_p99_ms=...
baseline_learner_updates_per_s=... idle_late_actions=... idle_work_p99_ms=...``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from limbic.runtime.priority import autogroup_nice

ARMS = ("idle", "os_nice", "autogroup")


def _burn(units: int) -> None:
    """A fixed amount of CPU work (pure Python, holds one core)."""
    x = 0
    for i in range(units):
        x += i * i
    if x < 0:  # never: keeps the loop from being optimised away
        print(x)


def _calibrate() -> float:
    """Units of :func:`_burn` per millisecond on this machine, now."""
    units = 200_000
    while True:
        t = time.perf_counter()
        _burn(units)
        took = time.perf_counter() - t
        if took > 0.05:
            return units / (took * 1e3)
        units *= 2


def _actor(seconds: float, units: int, hz: float, endpoint: str, out: Path) -> None:
    import zmq

    from limbic.runtime.episode_buffer import TickClock

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    clock = TickClock(1.0 / hz, threading.Event())
    deadline_s = 0.8 / hz
    rtt, work, late = [], [], []
    late_actions, seq = 0, 0
    end = time.monotonic() + seconds
    while True:
        slot = clock.next_s
        start = clock.begin()
        if slot is not None:
            late.append(start - slot)
        if start > end:
            break
        seq += 1
        sock.send(seq.to_bytes(8, "little"))
        answered = False
        while (left := start + deadline_s - time.monotonic()) > 0:
            if sock.poll(max(1, int(left * 1e3))) and int.from_bytes(sock.recv(), "little") == seq:
                answered = True  # (an older, late reply is dropped)
                break
        if not answered:
            late_actions += 1  # the arm holds still this tick
            continue
        t = time.monotonic()
        rtt.append(t - start)
        _burn(units)
        work.append(time.monotonic() - t)
    sock.close()
    ctx.term()
    out.write_text(
        json.dumps(
            dict(
                rtt_s=rtt,
                work_s=work,
                late_s=late,
                late_actions=late_actions,
                missed=clock.missed,
                hz=clock.achieved_hz,
            )
        )
    )


def _server(units: int, out: Path) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    out.write_text(f"tcp://127.0.0.1:{port}")
    while True:  # until killed
        who, request = sock.recv_multipart()
        _burn(units)
        sock.send_multipart([who, request])


def _learner(seconds: float, mode: str, out: Path) -> None:
    import torch

    if mode == "os_nice":
        os.nice(10)
        said = f"niceness {os.nice(0)}"
    else:
        from limbic.runtime.priority import lower_priority

        said = lower_priority(10)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(256, 256)
    updates, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        loss = (net(x) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        updates += 1
    out.write_text(json.dumps(dict(updates_per_s=updates / seconds, priority=said)))


def _spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "limbic.bench.priority", *args], start_new_session=True
    )


def _arm(arm: str, a: argparse.Namespace, units: tuple[int, int], tmp: Path) -> dict:
    procs, learner_out, address = [], tmp / f"{arm}-learner.json", tmp / f"{arm}-server"
    try:
        server = _spawn(["--role", "server", "--units", str(units[1]), "--out", str(address)])
        procs.append(server)
        deadline = time.monotonic() + 60.0
        while not address.exists() or not address.read_text():
            if server.poll() is not None:
                raise RuntimeError(f"the server stand-in exited with {server.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("the server stand-in did not bind within 60 s")
            time.sleep(0.05)
        if arm != "idle":
            learner = ["--role", "learner", "--mode", arm, "--seconds", str(a.seconds + 2)]
            procs.append(_spawn([*learner, "--out", str(learner_out)]))
            time.sleep(1.0)  # the learner is busy before the loops start
        outs = [tmp / f"{arm}-actor{i}.json" for i in range(a.actors)]
        actor = ["--role", "actor", "--seconds", str(a.seconds), "--units", str(units[0])]
        actor += ["--hz", str(a.hz), "--endpoint", address.read_text()]
        actors = [_spawn([*actor, "--out", str(o)]) for o in outs]
        procs += actors
        for p in procs[1:]:
            if p.wait(timeout=a.seconds + 120) != 0:
                raise RuntimeError(f"a {arm} process exited with {p.returncode}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    runs = [json.loads(o.read_text()) for o in outs]
    rtt, work, late = (
        np.concatenate([r[k] for r in runs] + [[np.nan]]) * 1e3
        for k in ("rtt_s", "work_s", "late_s")
    )
    learner = json.loads(learner_out.read_text()) if arm != "idle" else {}
    return dict(
        rtt_p50_ms=float(np.nanmedian(rtt)),
        rtt_p99_ms=float(np.nanpercentile(rtt, 99)),
        work_p50_ms=float(np.nanmedian(work)),
        work_p99_ms=float(np.nanpercentile(work, 99)),
        late_p99_ms=float(np.nanpercentile(late, 99)),
        late_max_ms=float(np.nanmax(late)),
        late_actions=int(sum(r["late_actions"] for r in runs)),
        missed_ticks=int(sum(r["missed"] for r in runs)),
        hz=float(np.mean([r["hz"] for r in runs])),
        learner_updates_per_s=float(learner.get("updates_per_s", 0.0)),
        priority=learner.get("priority", "-"),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="limbic-bench priority", description=__doc__.split("\n")[0])
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--hz", type=float, default=10.0)
    p.add_argument(
        "--work-ms", type=float, default=30.0, help="actor CPU work a tick, idle machine"
    )
    p.add_argument("--server-ms", type=float, default=20.0, help="server CPU work a request")
    p.add_argument("--seconds", type=float, default=30.0, help="per arm")
    roles = ("main", "actor", "server", "learner")
    p.add_argument("--role", choices=roles, default="main", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="autogroup", help=argparse.SUPPRESS)
    p.add_argument("--units", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--endpoint", default="", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.role == "actor":
        _actor(a.seconds, a.units, a.hz, a.endpoint, Path(a.out))
        return 0
    if a.role == "server":
        _server(a.units, Path(a.out))
        return 0
    if a.role == "learner":
        _learner(a.seconds, a.mode, Path(a.out))
        return 0
    if min(a.actors, a.hz, a.seconds, a.work_ms, a.server_ms) <= 0:
        p.error("--actors, --hz, --seconds, --work-ms and --server-ms must be positive")
    if (a.work_ms + a.server_ms) * a.hz >= 800:
        p.error(
            f"--work-ms {a.work_ms:g} and --server-ms {a.server_ms:g} do not fit in 80 % of a "
            f"{1000 / a.hz:.0f} ms tick"
        )
    per_ms = _calibrate()
    units = (max(1, int(per_ms * a.work_ms)), max(1, int(per_ms * a.server_ms)))
    print(
        f"# {a.actors} control loops at {a.hz:g} Hz: a server round trip ({a.server_ms:g} ms of "
        f"CPU) and {a.work_ms:g} ms of CPU work a tick; {len(os.sched_getaffinity(0))} cores, "
        f"{a.seconds:g} s per arm; autogroup scheduling "
        f"{'on' if _autogroup_enabled() else 'off'}"
        f"{'' if autogroup_nice() is not None else ' (no autogroups)'}"
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="limbic-bench-priority-") as tmp:
        for arm in ARMS:
            r = results[arm] = _arm(arm, a, units, Path(tmp))
            print(
                f"{arm:10s} round trip p50 {r['rtt_p50_ms']:5.1f} p99 {r['rtt_p99_ms']:5.1f} ms  "
                f"work p50 {r['work_p50_ms']:5.1f} p99 {r['work_p99_ms']:5.1f} ms  "
                f"late actions {r['late_actions']:3d}  "
                f"tick start late p99 {r['late_p99_ms']:5.1f} max {r['late_max_ms']:5.1f} ms  "
                f"missed {r['missed_ticks']:3d}  {r['hz']:5.2f} Hz  "
                f"learner {r['learner_updates_per_s']:5.1f} updates/s ({r['priority']})",
                flush=True,
            )
    new, base, idle = results["autogroup"], results["os_nice"], results["idle"]
    figures = {
        "late_actions": new["late_actions"],
        "missed_ticks": new["missed_ticks"],
        "work_p99_ms": f"{new['work_p99_ms']:.1f}",
        "learner_updates_per_s": f"{new['learner_updates_per_s']:.1f}",
        "baseline_late_actions": base["late_actions"],
        "baseline_missed_ticks": base["missed_ticks"],
        "baseline_work_p99_ms": f"{base['work_p99_ms']:.1f}",
        "baseline_learner_updates_per_s": f"{base['learner_updates_per_s']:.1f}",
        "idle_late_actions": idle["late_actions"],
        "idle_work_p99_ms": f"{idle['work_p99_ms']:.1f}",
    }
    print(" ".join(f"{k}={v}" for k, v in figures.items()))
    return 0


def _autogroup_enabled() -> bool:
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
