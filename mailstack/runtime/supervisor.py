"""``mailstack up``: every daemon as a child process (``mailstack serve NAME``).

It first checks the files the config names (``config.check_files``) and locks the data
directory (``run/up.lock``; each daemon holds ``run/<name>.lock``), so a second stack on the
same data stops with the first one's pid and ports. The supervisor prefixes each child's output
with its name, prints a banner once each child has logged every one of its listeners and
answers its health check, restarts a child that dies (backoff 1 s doubling to 30 s; reset
after a minute of uptime), and on SIGINT/SIGTERM stops all children (SIGTERM, then SIGKILL
after 10 s). A child that fails at its first start with exit code 2 (a port it may not bind, a
bad config) stops the whole stack with that message rather than restarting in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field

from ..accounts.capture import ensure_capture_account
from ..config import Config
from .banner import banner, listeners
from .daemon import SUPERVISOR_ENV, available_daemons
from .tls import TLSFiles, ensure_tls_files

STOP_GRACE = 10.0
#: daemons whose failure to start does not stop the stack (mail works without them)
OPTIONAL = frozenset({"http"})


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    given_up: bool = False
    pump: asyncio.Task[None] | None = field(default=None, repr=False)
    #: the ``listening on ...`` lines of its current process (how `up` knows it is ready)
    listening: list[str] = field(default_factory=list)


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Supervisor:
    def __init__(self, cfg: Config, daemons: list[str]) -> None:
        self.cfg = cfg
        self.stopping = False
        self.fatal: str | None = None
        base = [sys.executable, "-m", "mailstack", "serve"]
        extra = ["--port-offset", str(cfg.port_offset)]
        if cfg.capture.enabled:
            extra.append("--capture")
        if cfg.source != "<defaults>":
            extra += ["--config", os.path.abspath(cfg.source)]
        self.children = [Child(n, [*base, n, *extra]) for n in daemons]
        self._width = max(len(n) for n in daemons)
        self._changed = asyncio.Event()

    async def _spawn(self, child: Child) -> None:
        env = dict(os.environ)
        env.setdefault("MAILSTACK_DATA", str(self.cfg.data_dir))
        env[SUPERVISOR_ENV] = str(os.getpid())  # the child stops if this process dies
        child.proc = await asyncio.create_subprocess_exec(
            *child.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL, env=env, start_new_session=True)
        child.started = time.monotonic()
        child.listening = []
        child.pump = asyncio.create_task(self._pump(child, child.proc))

    async def _pump(self, child: Child, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        prefix = f"{child.name:<{self._width}} | "
        while True:
            line = await proc.stdout.readline()
            if not line:
                break
            text = line.decode("utf-8", "replace").rstrip("\n")
            if " listening on " in text and child.proc is proc:
                child.listening.append(text)
            _out(prefix + text)
        await proc.wait()
        self._changed.set()

    async def _watch(self) -> None:
        """Restart children that exit, unless we are stopping."""
        while not self.stopping:
            await self._changed.wait()
            self._changed.clear()
            for child in self.children:
                proc = child.proc
                if self.stopping or proc is None or proc.returncode is None:
                    continue
                code = proc.returncode
                if code == 2 and child.restarts == 0 and time.monotonic() - child.started < 10:
                    if child.name in OPTIONAL:
                        child.given_up, child.proc = True, None
                        _out(f"{child.name:<{self._width}} | could not start (see above); "
                             "the rest of the stack runs without it")
                        continue
                    self.fatal = f"{child.name} could not start (see its message above)"
                    self.stopping = True
                    return
                uptime = time.monotonic() - child.started
                if uptime > 60:
                    child.restarts = 0
                delay = min(30.0, 2.0 ** child.restarts)
                child.restarts += 1
                _out(f"{child.name:<{self._width}} | exited with code {code}; restarting in "
                     f"{delay:.0f}s")
                child.proc = None
                asyncio.get_running_loop().call_later(
                    delay, lambda c=child: asyncio.ensure_future(self._respawn(c)))

    async def _respawn(self, child: Child) -> None:
        if not self.stopping and child.proc is None:
            await self._spawn(child)

    async def _wait_listening(self, timeout: float = 20.0) -> bool:
        """True once every listener of every child is open *by that child* (its ``listening
        on`` line for the port or socket: another stack answering on the same port does not
        count) and each daemon answers its health check."""
        from .health import check

        deadline = time.monotonic() + timeout
        by_name = {c.name: c for c in self.children}
        pending = [(lst.daemon, re.compile(
            rf" listening on (unix:{re.escape(lst.path)}|\S*:{lst.port}) " if lst.path
            else rf" listening on \S*:{lst.port} "))
            for lst in listeners(self.cfg) if lst.daemon in by_name]
        while pending and not self.stopping:
            if time.monotonic() > deadline:
                return False
            pending = [(d, rx) for d, rx in pending if not by_name[d].given_up
                       and not any(rx.search(line) for line in by_name[d].listening)]
            await asyncio.sleep(0.05)
        for child in self.children:
            if self.stopping:
                return False
            if child.given_up or child.proc is None or child.proc.returncode is not None:
                continue
            ok, _ = await asyncio.to_thread(check, self.cfg, child.name, 2.0,
                                            max(0.0, deadline - time.monotonic()),
                                            lambda: self.stopping)
            if not ok:
                return False
        return not self.stopping and all(
            c.given_up or (c.proc is not None and c.proc.returncode is None)
            for c in self.children)

    async def _stop_all(self) -> None:
        self.stopping = True
        procs = [c.proc for c in self.children if c.proc and c.proc.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        if procs:
            await asyncio.wait([asyncio.create_task(p.wait()) for p in procs],
                                          timeout=STOP_GRACE)
            for p in procs:
                if p.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
                    await p.wait()
        for c in self.children:
            if c.pump:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.pump, 2)

    async def run(self) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        for child in self.children:
            await self._spawn(child)
        watcher = asyncio.create_task(self._watch())
        stopper = asyncio.create_task(stop.wait())
        ready = asyncio.create_task(self._wait_listening())
        await asyncio.wait({ready, stopper, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and ready.result() and not self.stopping:
            files = ensure_tls_files(self.cfg)
            _out(banner(self.cfg, [c.name for c in self.children if not c.given_up],
                        str(files.ca) if files.ca else None))
        elif ready.done() and not self.stopping:
            _out("mailstack: not every listener answered within 20 s; see the lines above")
        await asyncio.wait({stopper, watcher}, return_when=asyncio.FIRST_COMPLETED)
        await self._stop_all()
        watcher.cancel()
        ready.cancel()
        if self.fatal:
            print(f"mailstack: {self.fatal}", file=sys.stderr)
            return 2
        _out("mailstack: all daemons stopped")
        return 0


class DataDirBusy(Exception):
    """Another mailstack holds the data directory; the message names its pid and ports."""


def lock_data_dir(cfg: Config, who: str) -> int:
    """Hold ``<data_dir>/run/<who>.lock`` for this process's life (``who``: ``up`` or a daemon).

    Two stacks, or two of one daemon, on one data directory would share its queue and
    mailboxes behind each other's back; the second stops with :class:`DataDirBusy` instead.
    The lock is an ``flock``, so a crashed holder leaves nothing to clean up; it also works
    across containers sharing the volume. Returns the descriptor (not inherited by children).
    """
    from .banner import listeners

    run = cfg.data_dir / "run"
    run.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = run / f"{who}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        os.close(fd)
        what = "mailstack up" if who == "up" else f"mailstack serve {who}"
        raise DataDirBusy(
            f"{cfg.data_dir} is in use by {what} ({holder or 'pid unknown'}); stop it first, "
            "or give this one its own data_dir (--config FILE, or MAILSTACK_DATA=DIR)") from None
    daemons = None if who == "up" else {who}
    ports = ", ".join(f"{lst.name} {lst.port}" for lst in listeners(cfg)
                      if lst.port and (daemons is None or lst.daemon in daemons))
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}{', ports ' + ports if ports else ''}\n".encode(), 0)
    return fd


def data_dir_in_use(cfg: Config) -> bool:
    """True when a ``mailstack up`` or any daemon holds its lock on the data directory."""
    for path in (cfg.data_dir / "run").glob("*.lock"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
    return False


def prepare_data_dir(cfg: Config) -> TLSFiles:
    """Create the data directory's folders and TLS files (idempotent)."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("mail", "queue"):
        (cfg.data_dir / sub).mkdir(exist_ok=True, mode=0o700)
    return ensure_tls_files(cfg)


def up(cfg: Config) -> int:
    """Check the files, lock and prepare the data directory, then run the supervisor until a
    signal."""
    from ..config import check_files

    problems = check_files(cfg)
    for problem in problems:
        print(f"mailstack: {problem}", file=sys.stderr)
    if problems:
        return 2
    try:
        lock = lock_data_dir(cfg, "up")
    except DataDirBusy as exc:
        print(f"mailstack: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"mailstack: cannot lock {cfg.data_dir}: {exc}", file=sys.stderr)
        return 1
    try:
        prepare_data_dir(cfg)  # before the children start, so they do not race to make it
        ensure_capture_account(cfg)
    except OSError as exc:
        print(f"mailstack: cannot prepare {cfg.data_dir}: {exc}", file=sys.stderr)
        os.close(lock)
        return 1
    daemons = available_daemons()
    return asyncio.run(Supervisor(cfg, daemons).run())
