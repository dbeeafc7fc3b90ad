"""Two imap daemons (and a pop3 daemon) as separate processes over one data directory, as
production runs them (``mailstack serve``, uvloop): the store is the only thing they share."""

from __future__ import annotations

import imaplib
import poplib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailstack.config import Config, load
from tests.conftest import add_user, write_config
from tests.e2e.helpers import Proc

USER = "alice@example.test"
PASSWORD = "wonderland"


def wait_port(port: int, proc: Proc, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.popen.poll() is not None:
                raise AssertionError(f"daemon exited:\n{proc.output}") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"port {port} not open:\n{proc.output}") from None
            time.sleep(0.05)


@dataclass
class Stack:
    cfg: Config
    imap_ports: list[int]
    pop3_port: int
    procs: list[Proc] = field(default_factory=list)
    killed_logs: list[str] = field(default_factory=list)  # of daemons killed by a test
    clients: list[imaplib.IMAP4 | poplib.POP3] = field(default_factory=list)

    def imap(self, which: int = 0, *, select: str | None = "INBOX") -> imaplib.IMAP4:
        c = imaplib.IMAP4("127.0.0.1", self.imap_ports[which], timeout=30)
        self.clients.append(c)
        c.login(USER, PASSWORD)
        if select:
            typ, _ = c.select(select)
            assert typ == "OK"
        return c

    def pop3(self) -> poplib.POP3:
        c = poplib.POP3("127.0.0.1", self.pop3_port, timeout=30)
        self.clients.append(c)
        c.user(USER)
        c.pass_(PASSWORD)
        return c

    @property
    def logs(self) -> str:
        return "".join(self.killed_logs) + "".join(p.output for p in self.procs)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    data = tmp_path / "data"
    first = load(write_config(tmp_path), env={})
    other_dir = tmp_path / "second"
    other_dir.mkdir()
    second_path = write_config(other_dir, f'[server]\ndata_dir = "{data}"')
    second = load(second_path, env={})
    add_user(first, USER, PASSWORD)
    st = Stack(first, [first.port("imap", "imap"), second.port("imap", "imap")],
               first.port("pop3", "pop3"))
    try:
        for name, path in (("imap", tmp_path / "mailstack.toml"), ("imap", second_path),
                           ("pop3", tmp_path / "mailstack.toml")):
            st.procs.append(Proc("serve", name, "--config", str(path)))
        for port, proc in zip([*st.imap_ports, st.pop3_port], st.procs, strict=True):
            wait_port(port, proc)
        yield st
    finally:
        for c in st.clients:
            sock = getattr(c, "sock", None)
            if sock is not None:
                sock.close()
            f = getattr(c, "file", None)
            if f is not None:
                f.close()
        for p in st.procs:
            p.terminate()
            if p.popen.stdout is not None:
                p.popen.stdout.close()
    assert "Traceback" not in st.logs, st.logs
    assert "SERVERBUG" not in st.logs, st.logs
