"""Lowering a background process's CPU priority so that it really yields to the control loops.

On Linux with autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``, on by default
in most distributions and on this project's machines), the scheduler first shares the CPU among
*sessions* and only then among the processes of one session by their niceness. A niced process
that leads a session of its own (``limbic-train`` starts every child that way, and so does a
shell per terminal) therefore still gets as much CPU as each actor: ``os.nice`` alone does
nothing against processes of other sessions. :func:`lower_priority` also lowers the priority of
the process's autogroup when the session is its own (``/proc/self/autogroup``, which an
unprivileged process may always make nicer), and says so when it cannot.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

AUTOGROUP = Path("/proc/self/autogroup")


def autogroup_nice(path: Path = AUTOGROUP) -> int | None:
    """The niceness of this process's autogroup (``None``: no autogroups here)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    # "/autogroup-123 nice 5"
    parts = text.split()
    if len(parts) != 3 or parts[1] != "nice":
        return None
    return int(parts[2])


def lower_priority(nice: int, path: Path = AUTOGROUP) -> str:
    """Add ``nice`` to this process's niceness, and to its autogroup's when it leads its session.

    Returns what was done, in words (for the log). Raises ``ValueError`` on a negative ``nice``:
    this only ever lowers priority.
    """
    if nice < 0:
        raise ValueError(f"nice must be >= 0 (lowering priority only), got {nice}")
    if nice == 0:
        return "priority unchanged (nice 0)"
    process = os.nice(nice)
    group = autogroup_nice(path)
    if group is None:
        return f"niceness {process} (no autogroup scheduling here)"
    if os.getsid(0) != os.getpid():
        return (
            f"niceness {process}; its autogroup (nice {group}) is shared with the rest of its "
            "session, so it yields only to processes of that session (start it with `setsid` "
            "to yield to actors started elsewhere)"
        )
    target = min(19, group + nice)
    for attempt in range(20):
        try:
            path.write_text(str(target))
            break
        except OSError as e:
            # The kernel lets an unprivileged process change an autogroup's niceness at most
            # once per 100 ms (over the whole machine): EAGAIN, try again shortly.
            if e.errno != errno.EAGAIN or attempt == 19:
                return f"niceness {process}; autogroup niceness unchanged ({e})"
            time.sleep(0.11)
    return f"niceness {process}, autogroup niceness {autogroup_nice(path)}"
