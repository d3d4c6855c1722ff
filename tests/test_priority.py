"""The learner's lower priority holds against processes of other sessions; missed ticks say why."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from limbic.launch.config import ConfigError
from limbic.runtime.episode_buffer import TickClock
from limbic.runtime.learner import LearnerConfig
from limbic.runtime.priority import autogroup_nice, lower_priority

needs_autogroup = pytest.mark.skipif(
    autogroup_nice() is None, reason="no autogroup scheduling on this kernel"
)

REPORT = (
    "import os; from limbic.runtime.priority import autogroup_nice, lower_priority; "
    "before = autogroup_nice(); said = lower_priority(5); "
    "print(before, autogroup_nice(), os.nice(0), said, sep='|')"
)


def _run(code: str, new_session: bool) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=new_session,
        check=True,
    ).stdout
    return out.strip().split("|")


@needs_autogroup
def test_a_session_leader_also_lowers_its_autogroup():
    before, after, niceness, said = _run(REPORT, new_session=True)
    assert int(after) == min(19, int(before) + 5)
    assert int(niceness) >= 5
    assert "autogroup niceness" in said


@needs_autogroup
def test_a_process_sharing_its_session_leaves_the_autogroup_alone():
    before, after, niceness, said = _run(REPORT, new_session=False)
    assert after == before  # the rest of the session (here: pytest) keeps its priority
    assert int(niceness) >= 5
    assert "setsid" in said


def test_priority_is_only_ever_lowered():
    with pytest.raises(ValueError, match="lowering priority only"):
        lower_priority(-1)
    assert lower_priority(0) == "priority unchanged (nice 0)"
    with pytest.raises(ConfigError, match="learner.nice"):
        LearnerConfig(nice=-5)


SPIN = (
    "import sys, time; from limbic.runtime.priority import lower_priority\n"
    "if sys.argv[1] == '1': lower_priority(10)\n"
    "end = time.monotonic() + 2.0; n = 0\n"
    "while time.monotonic() < end: n += 1\n"
    "print(n)"
)


def test_a_niced_process_in_its_own_session_yields_the_cores():
    """As ``limbic-train`` starts the learner: its own session. Twice as many spinners as cores,
    half of them lowered: those get a small share of the CPU (under autogroup scheduling, plain
    ``os.nice`` would leave them an equal share)."""
    cores = len(os.sched_getaffinity(0))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SPIN, str(i % 2)],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for i in range(2 * cores)
    ]
    counts = [0, 0]
    try:
        for i, p in enumerate(procs):
            out, _ = p.communicate(timeout=120)
            counts[i % 2] += int(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert counts[1] < counts[0] / 3, counts


class _SlowWake(threading.Event):
    """A stop event whose waits oversleep by ``extra_s`` (a descheduled control loop)."""

    def __init__(self, extra_s: float):
        super().__init__()
        self.extra_s = extra_s

    def wait(self, timeout=None):
        time.sleep((timeout or 0.0) + self.extra_s)
        return False


def test_a_missed_tick_names_the_overrunning_phase(caplog):
    clock = TickClock(0.05, threading.Event())
    caplog.set_level(logging.INFO, logger="limbic.runtime.episode_buffer")
    clock.begin()
    clock.mark("observe")
    time.sleep(0.12)
    clock.mark("step")
    clock.begin()
    assert clock.missed == 1
    (line,) = [r.getMessage() for r in caplog.records if "missed" in r.getMessage()]
    assert "the previous tick's work took" in line
    assert "observe 0" in line and "step 12" in line
    assert "on a CPU in this thread" in line and "woke" not in line


def test_a_missed_tick_after_a_late_wake_says_so(caplog):
    clock = TickClock(0.05, _SlowWake(0.06))
    caplog.set_level(logging.INFO, logger="limbic.runtime.episode_buffer")
    clock.begin()
    clock.mark("observe")
    clock.begin()  # the work ended in time; the wait overslept its slot by 60 ms
    assert clock.missed == 1
    (line,) = [r.getMessage() for r in caplog.records if "missed" in r.getMessage()]
    assert "ended before the slot: the wait woke 6" in line
