"""Test stacks take their ports below the kernel's ephemeral range."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mailstack.testing import ports
from mailstack.testing.ports import free_port


def test_free_ports_are_below_the_ephemeral_range() -> None:
    """Outgoing connections take their source ports from the ephemeral range: never ours."""
    start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 15 and all(p < start for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.pop()))  # free indeed


def test_a_port_is_not_handed_out_twice_before_it_is_bound(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    """A config asks for a dozen ports before any daemon binds one: two picks of one free port
    would both pass the bind check, and the second daemon would fail with EADDRINUSE."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # 2,000 reservations of its own
    ports = [free_port() for _ in range(2000)]  # random picks: ~60 repeats if not prevented
    assert len(set(ports)) == len(ports)


def test_xdist_workers_pick_from_separate_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two xdist workers are two processes: each remembers only its own picks, so each takes
    its ports from its own part of the range."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    seen = {}
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        seen[worker] = ports._span()
        assert all(seen[worker][0] <= free_port() <= seen[worker][1] for _ in range(50))
    (low0, top0), (low1, top1) = seen["gw0"], seen["gw1"]
    assert low0 < top0
    assert top0 < low1 and top1 - low1 > 1000


PICK = """
import random, sys
from mailstack.testing import ports
ports._random = random.Random(int(sys.argv[1]))
print(" ".join(str(ports.free_port()) for _ in range(100)))
"""


def test_two_runs_on_one_machine_never_pick_the_same_port(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """Two independent test runs (two processes with the same random sequence, the worst case)
    get disjoint ports: each pick is reserved machine-wide until its stack has bound it."""
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env["PYTHONPATH"] = str(Path(ports.__file__).resolve().parents[2])
    env["TMPDIR"] = str(tmp_path)  # their own reservations: not those of the suite around them
    seed = str(random.randrange(1 << 30))
    first, second = (subprocess.run([sys.executable, "-c", PICK, seed], env=env,
                                    capture_output=True, text=True, check=True).stdout.split()
                     for _ in range(2))
    assert len(first) == len(second) == 100
    assert not set(first) & set(second)
    start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    folder = tmp_path / ports.reservations().name
    assert all(int(p) < start and (folder / p).exists() for p in first + second)
