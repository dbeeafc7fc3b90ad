"""How a test stack starts its daemons: forked from a warm fork server, or as plain
``python -m mailstack serve NAME`` subprocesses. Either way one process per daemon."""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Protocol

import mailstack

#: the directory that holds the ``mailstack`` package, so children run this very code
PACKAGE_ROOT = str(Path(mailstack.__file__).resolve().parents[1])


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTACK_")}
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Launcher(Protocol):
    def spawn(self, name: str, config: Path, log: Path,
              env: Mapping[str, str] | None = None) -> int: ...
    def exited(self, pids: list[int]) -> dict[int, int]: ...
    def stop(self, pids: list[int], timeout: float) -> dict[int, int]: ...
    def terminate(self, pids: list[int]) -> None: ...


class ForkServerLauncher:
    """Talks to one ``mailstack.testing.forkserver`` process (started on first use)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = False

    def _popen(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "mailstack.testing.forkserver"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, env=child_env(), start_new_session=True)
            self._ready = False
        return self._proc

    def _ensure(self) -> subprocess.Popen[bytes]:
        proc = self._popen()
        if not self._ready:
            first = self._read(proc.stdout)
            if "ready" not in first:
                raise RuntimeError(f"mailstack fork server did not start: {first}")
            self._ready = True
        return proc

    def prestart(self) -> None:
        """Start the server without waiting for it (its imports run in the background)."""
        with self._lock:
            self._popen()

    @staticmethod
    def _read(stream: IO[bytes] | None) -> dict[str, object]:
        assert stream is not None
        line = stream.readline()
        if not line:
            raise RuntimeError("mailstack fork server exited")
        return json.loads(line)

    def _call(self, req: dict[str, object]) -> dict[str, object]:
        with self._lock:
            proc = self._ensure()
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(req).encode() + b"\n")
            proc.stdin.flush()
            return self._read(proc.stdout)

    def spawn(self, name: str, config: Path, log: Path,
              env: Mapping[str, str] | None = None) -> int:
        reply = self._call({"op": "spawn", "name": name, "config": str(config),
                            "log": str(log), "env": dict(env or {})})
        return int(reply["pid"])  # type: ignore[call-overload]

    def exited(self, pids: list[int]) -> dict[int, int]:
        reply = self._call({"op": "status", "pids": pids})
        return {int(k): int(v) for k, v in reply["exited"].items()}  # type: ignore[union-attr]

    def terminate(self, pids: list[int]) -> None:
        """SIGTERM without waiting (:meth:`exited` tells when they are gone)."""
        self._call({"op": "term", "pids": pids})

    def stop(self, pids: list[int], timeout: float) -> dict[int, int]:
        """SIGTERM, SIGKILL after ``timeout``; the exit codes (negative: killed by a signal)."""
        reply = self._call({"op": "stop", "pids": pids, "timeout": timeout})
        return {int(k): int(v) for k, v in reply["exited"].items()}  # type: ignore[union-attr]

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                assert self._proc.stdin is not None
                self._proc.stdin.close()
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                if self._proc.stdout is not None:
                    self._proc.stdout.close()
                self._proc = None


class SubprocessLauncher:
    """``python -m mailstack serve NAME --config FILE``, one fresh interpreter per daemon."""

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        atexit.register(self._kill_all)  # a stack that was never closed ends with the process

    def _kill_all(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.kill()

    def spawn(self, name: str, config: Path, log: Path,
              env: Mapping[str, str] | None = None) -> int:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mailstack", "serve", name, "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**child_env(), **(env or {})}, start_new_session=True)
        self._procs[proc.pid] = proc
        return proc.pid

    def exited(self, pids: list[int]) -> dict[int, int]:
        out = {}
        for pid in pids:
            code = self._procs[pid].poll() if pid in self._procs else None
            if code is not None:
                out[pid] = code
        return out

    def terminate(self, pids: list[int]) -> None:
        for pid in pids:
            proc = self._procs.get(pid)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def stop(self, pids: list[int], timeout: float) -> dict[int, int]:
        procs = [self._procs.pop(p) for p in pids if p in self._procs]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return {proc.pid: proc.returncode for proc in procs}


_fork_server: ForkServerLauncher | None = None
_fork_lock = threading.Lock()


def get_launcher(kind: str) -> Launcher:
    """``"fork"`` (the shared fork server; POSIX only) or ``"subprocess"``."""
    global _fork_server
    if kind == "fork" and hasattr(os, "fork"):
        with _fork_lock:
            if _fork_server is None:
                _fork_server = ForkServerLauncher()
            return _fork_server
    if kind not in ("fork", "subprocess"):
        raise ValueError(f"launcher must be 'fork' or 'subprocess', not {kind!r}")
    return SubprocessLauncher()
