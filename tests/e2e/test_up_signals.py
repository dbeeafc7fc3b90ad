"""`mailstack up` and signals: killed with SIGKILL it leaves nothing to clean up (README: `up`
holds `run/up.lock` with `flock`), and Ctrl-C (SIGINT to the terminal's process group) stops
every daemon."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from .helpers import Proc, free_offset, mailstack, proc, refuses

pytestmark = pytest.mark.e2e


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "m.toml"
    path.write_text(f'[server]\nhostname = "mail.example.test"\ndomains = ["example.test"]\n'
                    f'data_dir = "{tmp_path / "data"}"\nbind = ["127.0.0.1"]\n')
    return path


def _children(output: str) -> dict[str, int]:
    """The pid of each daemon, from its log lines (``mta[NNN]``)."""
    return {name: int(pid) for name, pid in
            re.findall(r"\b(mta|mda|imap|pop3|http)\[(\d+)\]", output)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is gone for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if _alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def test_up_killed_then_started_again_then_ctrl_c(tmp_path: Path) -> None:
    path = _config(tmp_path)
    mailstack("user", "add", "alice@example.test", "--password-stdin", "--config", str(path),
              input="pw\n")
    off = free_offset()
    args = ("up", "--config", str(path), "--port-offset", str(off))
    first = Proc(*args)
    pids: dict[str, int] = {}
    try:
        first.wait_for_output("mailstack is up", 90)
        pids = _children(first.output)
        assert set(pids) == {"mta", "mda", "imap", "pop3", "http"}, first.output
        os.kill(first.popen.pid, signal.SIGKILL)  # up alone, as the OOM killer would
        first.popen.wait()
        # its daemons notice and stop by themselves: nothing holds the ports or the data
        # directory's locks when an init system starts `up` again
        left = _wait_gone(list(pids.values()), 60)
        assert not left, f"daemons outlived a killed `up`: {left}\n{first.output}"
    finally:
        first.kill9()
        for pid in pids.values():  # never leave daemons behind, even when the test fails
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    lock = tmp_path / "data" / "run" / "up.lock"
    assert lock.exists()  # left behind, and no obstacle
    with proc(*args) as again:
        again.wait_for_output("mailstack is up", 90)
        assert lock.exists()
        pids = _children(again.output)
        assert set(pids) == {"mta", "mda", "imap", "pop3", "http"}, again.output
        os.killpg(again.popen.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
        code = again.popen.wait(30)
        again._close_output()
        out = again.output
        assert code in (0, 130), out
        assert "all daemons stopped" in out and "Traceback" not in out, out
        assert not _wait_gone(list(pids.values()), 30), out
        assert refuses(off + 25) and refuses(off + 143), out
