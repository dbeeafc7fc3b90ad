"""Run the real CLI as subprocesses on free ports (the way users and docker-compose do)."""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from mailstack.store.maildir import delivery_order

ROOT = Path(__file__).resolve().parents[2]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("MAILSTACK_CONFIG", None)
    return env


def mailstack(*args: str, input: str | None = None, check: bool = True,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "mailstack", *args], input=input,
                          capture_output=True, text=True, env=cli_env(), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"mailstack {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


class Proc:
    """A long-running mailstack process whose output is collected in the background."""

    def __init__(self, *args: str) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "mailstack", *args], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env=cli_env(), start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_output(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.popen.poll() is not None and text not in self.output:
                time.sleep(0.2)
                if text in self.output:
                    return
                raise AssertionError(f"process exited ({self.popen.returncode}):\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout}s:\n{self.output}")
            time.sleep(0.05)

    def terminate(self, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._close_output()
        return self.popen.returncode

    def _close_output(self) -> None:
        self._reader.join(5)
        if self.popen.stdout is not None and not self._reader.is_alive():
            self.popen.stdout.close()

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        self._close_output()


@contextlib.contextmanager
def proc(*args: str) -> Iterator[Proc]:
    p = Proc(*args)
    try:
        yield p
    finally:
        if p.popen.poll() is None:
            p.terminate()


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def submit(port: int, ca: Path, user: str, password: str, rcpts: list[str], body: str,
           implicit: bool = False) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    if implicit:
        with smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=15) as s:
            s.login(user, password)
            s.sendmail(user, rcpts, body)
        return
    with smtplib.SMTP("127.0.0.1", port, timeout=15) as s:
        s.starttls(context=ctx)
        s.login(user, password)
        s.sendmail(user, rcpts, body)


def maildir_files(data: Path, address: str) -> list[Path]:
    local, _, domain = address.partition("@")
    box = data / "mail" / domain / local
    # in delivery order: unique names sort by their numbers, not as text (M987654 < M15225)
    return sorted((p for d in ("new", "cur") if (box / d).exists() for p in (box / d).iterdir()),
                  key=lambda p: delivery_order(p.name))


def wait_files(data: Path, address: str, n: int, timeout: float = 20) -> list[Path]:
    deadline = time.monotonic() + timeout
    while True:
        files = maildir_files(data, address)
        if len(files) >= n or time.monotonic() > deadline:
            return files
        time.sleep(0.05)


def free_offset() -> int:
    """A --port-offset under which every standard port is free on 127.0.0.1."""
    import random

    for _ in range(200):
        off = random.randrange(20000, 60000, 100)
        try:
            for p in (25, 587, 465, 24, 143, 993, 110, 995, 80):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", off + p))
            return off
        except OSError:
            continue
    raise RuntimeError("no free port offset")


def refuses(port: int) -> bool:
    """Whether nothing accepts a connection on 127.0.0.1:``port`` (within a second)."""
    try:
        with socket.create_connection(("127.0.0.1", port), 1):
            return False
    except OSError:
        return True
