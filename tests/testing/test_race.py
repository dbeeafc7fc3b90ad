"""No signal reaches a daemon before it can handle it: reset() right after start never kills
the mta (issue 14: ~2 first tests in 100 failed with the mta dead of SIGUSR1)."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from mailstack.config import load
from mailstack.testing import MailStack
from mailstack.testing.launcher import get_launcher

from ..conftest import write_config


def _wait_for(cond: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.002)


def test_sigusr1_the_moment_the_first_port_answers(tmp_path: Path) -> None:
    """The harshest timing: SIGUSR1 as soon as the mta's first listener accepts a connection
    (its other listeners may still be opening). The mta must flush, not die."""
    launcher = get_launcher("fork")
    for i in range(15):
        base = tmp_path / str(i)
        base.mkdir()
        path = write_config(base)
        cfg = load(path, env={})
        log = base / "mta.log"
        pid = launcher.spawn("mta", path, log)
        try:
            port = cfg.port("mta", "smtp")
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    assert not launcher.exited([pid]), log.read_text()
            os.kill(pid, signal.SIGUSR1)
            _wait_for(lambda: "flush requested" in log.read_text()  # noqa: B023
                      or launcher.exited([pid]), "neither flushed nor exited")  # noqa: B023
            assert not launcher.exited([pid]), f"round {i}: mta died\n{log.read_text()}"
        finally:
            codes = launcher.stop([pid], 5)
        assert codes == {pid: 0}, log.read_text()


def test_start_and_reset_many_times() -> None:
    """What a test session does first, repeated: start a stack, reset() at once, use it."""
    for i in range(40):
        with MailStack() as stack:
            stack.reset()
            assert stack.alive(), f"round {i}\n{stack.logs()}"
            user = stack.add_user("a@example.test")
            with socket.create_connection((stack.host, stack.ports["smtp"]), 10) as s:
                assert s.recv(100).startswith(b"220 ")
            stack.reset()
            assert stack.alive(), f"round {i}\n{stack.logs()}"
            assert "mta" in stack.logs() and user.address not in stack.users()
