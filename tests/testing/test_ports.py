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


def test_a_port_is_not_handed_out_twice_before_it_is_bound() -> None:
    """A config asks for a dozen ports before any daemon binds one: two picks of one free port
    would both pass the bind check, and the second daemon would fail with EADDRINUSE."""
    ports = [free_port() for _ in range(2000)]  # random picks: ~60 repeats if not prevented
    assert len(set(ports)) == len(ports)
