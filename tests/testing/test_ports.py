"""Test stacks take their ports below the kernel's ephemeral range."""

from __future__ import annotations

import socket
from pathlib import Path

from mailstack.testing.ports import free_port


def test_free_ports_are_below_the_ephemeral_range() -> None:
    """Outgoing connections take their source ports from the ephemeral range: never ours."""
    start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 15 and all(p < start for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.pop()))  # free indeed
