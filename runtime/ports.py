"""Free TCP ports that stay free until a child process binds them.

A port the kernel hands out for ``bind(0)`` comes from its ephemeral range, the same range it
draws from for the local end of every outgoing connection. Chosen there, a port can be taken by
some process's outgoing connection in the moment between choosing it and the child's ``bind``
(``Address already in use``, and a restart on the same port fails the same way). Ports below the
range are never handed out implicitly, so :func:`free_port` chooses there.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LINUX_DEFAULT_RANGE = (32768, 60999)
LOWEST_PORT = 10000
"""The lowest port chosen (well clear of the registered services below it)."""


def ephemeral_range(path: Path = EPHEMERAL_RANGE) -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux's default where the file cannot be read)."""
    try:
        low, high = (int(v) for v in path.read_text().split())
    except (OSError, ValueError):
        return LINUX_DEFAULT_RANGE
    return low, high


def free_port(host: str = "127.0.0.1", tries: int = 200, path: Path = EPHEMERAL_RANGE) -> int:
    """A TCP port of ``host`` that is free now and outside the ephemeral range (where one is
    free there; else one the kernel picks)."""
    low, high = ephemeral_range(path)
    pool = [*range(LOWEST_PORT, low), *range(high + 1, 65536)]
    for port in random.sample(pool, min(tries, len(pool))):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
