"""``mailstack up``: every daemon as a child process (``mailstack serve NAME``).

The supervisor prefixes each child's output with its name, prints a banner once every listener
answers, restarts a child that dies (backoff 1 s doubling to 30 s; reset after a minute of
uptime), and on SIGINT/SIGTERM stops all children (SIGTERM, then SIGKILL after 10 s). A child
that fails at its first start with exit code 2 (a port it may not bind, a bad config) stops the
whole stack with that message rather than restarting in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import unixsock
from .banner import banner, listeners
from .capture import ensure_capture_account
from .config import Config
from .daemon import available_daemons
from .tls import TLSFiles, ensure_tls_files

STOP_GRACE = 10.0
#: daemons whose failure to start does not stop the stack (mail works without them)
OPTIONAL = frozenset({"autoconfig"})


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    given_up: bool = False
    pump: asyncio.Task[None] | None = field(default=None, repr=False)


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
        child.proc = await asyncio.create_subprocess_exec(
            *child.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL, env=env, start_new_session=True)
        child.started = time.monotonic()
        child.pump = asyncio.create_task(self._pump(child, child.proc))

    async def _pump(self, child: Child, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        prefix = f"{child.name:<{self._width}} | "
        while True:
            line = await proc.stdout.readline()
            if not line:
                break
            _out(prefix + line.decode("utf-8", "replace").rstrip("\n"))
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
        deadline = time.monotonic() + timeout
        pending = [(lst.daemon, a, lst.port) for lst in listeners(self.cfg)
                   for a in (lst.addresses[:1] if not lst.path else [lst.path])
                   if lst.daemon in {c.name for c in self.children}]
        while pending and time.monotonic() < deadline and not self.stopping:
            given_up = {c.name for c in self.children if c.given_up}
            pending = [p for p in pending if p[0] not in given_up]
            if not pending:
                break
            _, host, port = pending[0]
            try:
                connect = unixsock.open_connection(Path(host)) if not port \
                    else asyncio.open_connection(host, port)
                _, w = await asyncio.wait_for(connect, 1)
                w.close()
                pending.pop(0)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.1)
        return not pending

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


def prepare_data_dir(cfg: Config) -> TLSFiles:
    """Create the data directory's folders and TLS files (idempotent)."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("mail", "queue"):
        (cfg.data_dir / sub).mkdir(exist_ok=True, mode=0o700)
    return ensure_tls_files(cfg)


def up(cfg: Config) -> int:
    """Prepare the data directory, then run the supervisor until a signal."""
    try:
        prepare_data_dir(cfg)  # before the children start, so they do not race to make it
        ensure_capture_account(cfg)
    except OSError as exc:
        print(f"mailstack: cannot prepare {cfg.data_dir}: {exc}", file=sys.stderr)
        return 1
    daemons = available_daemons()
    return asyncio.run(Supervisor(cfg, daemons).run())
