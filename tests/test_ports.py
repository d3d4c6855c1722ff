"""Free ports for child processes: outside the kernel's ephemeral range, and really free."""

import socket

from limbic.runtime.ports import LINUX_DEFAULT_RANGE, LOWEST_PORT, ephemeral_range, free_port
from limbic.runtime.supervisor import free_endpoint


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_free_ports_lie_outside_the_ephemeral_range_that_outgoing_connections_use():
    """A port from the ephemeral range can be taken by any outgoing connection before the child
    binds it (the job's server then failed on every restart); these never are."""
    low, high = ephemeral_range()
    for _ in range(20):
        port = free_port()
        assert LOWEST_PORT <= port < low or high < port <= 65535
        assert _bindable(port)
    host, port = free_endpoint("tcp://127.0.0.1:0").rsplit(":", 1)
    assert host == "tcp://127.0.0.1" and not low <= int(port) <= high
    assert free_endpoint("tcp://127.0.0.1:5555") == "tcp://127.0.0.1:5555"
    chosen: set[str] = set()
    picked = [free_endpoint("tcp://127.0.0.1:0", chosen) for _ in range(50)]
    assert len(set(picked)) == 50 and chosen == set(picked)  # none handed out twice


def test_a_taken_port_is_skipped_and_an_unreadable_range_means_linuxs_default(tmp_path):
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text(f"{LOWEST_PORT + 1}\t65535\n")  # one port outside it: LOWEST_PORT
    with socket.socket() as held:
        try:
            held.bind(("127.0.0.1", LOWEST_PORT))
        except OSError:
            pass  # taken already, by someone else
        port = free_port(path=ranges)
        assert port != LOWEST_PORT and _bindable(port)  # the kernel's pick instead
    assert ephemeral_range(tmp_path / "missing") == LINUX_DEFAULT_RANGE
    ranges.write_text("not numbers")
    assert ephemeral_range(ranges) == LINUX_DEFAULT_RANGE
