"""Running one daemon in the foreground: logging, uvloop, open-files limit, signals.

Every daemon package has a module ``mailstack.<name>.daemon`` with::

    async def serve(cfg: Config, stop: asyncio.Event) -> None

which opens its listeners, logs one ``listening on ...`` line per listener, waits for ``stop``
and then closes gracefully. :func:`run` wraps it for ``mailstack serve NAME``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import signal
import sys
import warnings
from collections.abc import Awaitable, Callable
from typing import cast

from ..config import Config
from . import loopwatch, testhooks
from .allocator import Trimmer, configure_allocator
from .fsutil import private_umask
from .netserver import BindError, install_uvloop, raise_nofile_limit

DAEMONS: dict[str, str] = {
    "mda": "mailstack.mda.daemon",
    "mta": "mailstack.mta.daemon",
    "imap": "mailstack.imap.daemon",
    "pop3": "mailstack.pop3.daemon",
    "http": "mailstack.http.daemon",
}
#: other names of a daemon (``mailstack serve autoconfig`` runs the http daemon)
ALIASES: dict[str, str] = {"autoconfig": "http"}

ServeFn = Callable[[Config, asyncio.Event], Awaitable[None]]

#: the garbage collector's thresholds in a daemon. Python's default of 700 container objects
#: runs a young collection a few times per big command (a FETCH or STORE of 1:* on 10,000
#: messages allocates tens of thousands of tuples), and every tenth of those promotes the
#: command's short-lived objects until a full collection walks every long-lived one: 8-20 ms of
#: the event loop in one stretch (``bench/loop_stall.py``). With 10,000 the objects of a command
#: are usually freed by their reference counts before any collection sees them; the largest
#: stretch of any command fell from 12-15 ms to 5-7 ms. Memory held by cyclic garbage between
#: collections is bounded by the same count.
GC_THRESHOLDS = (10_000, 10, 10)


def available_daemons() -> list[str]:
    """Daemons whose module is present in this installation, in start order."""
    out = []
    for name, mod in DAEMONS.items():
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError:
            continue
        out.append(name)
    return out


def setup_logging(name: str, level: str = "info") -> None:
    """Log lines a sysadmin can read: ``2026-11-26 15:53:05 mta[1234] INFO: text``."""
    fmt = f"%(asctime)s {name}[%(process)d] %(levelname)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtpd logs protocol chatter and deprecation notes under "mail.log"; we log every
    # transaction ourselves, so keep only its errors
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    # 465 requires AUTH with auth_require_tls=False because the whole connection is TLS
    warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")


def load_serve(name: str) -> ServeFn:
    name = ALIASES.get(name, name)
    if name not in DAEMONS:
        raise SystemExit(f"mailstack: unknown daemon {name!r} (choose from {', '.join(DAEMONS)})")
    return cast(ServeFn, importlib.import_module(DAEMONS[name]).serve)


#: set by ``mailstack up`` for its children: its pid. A child whose parent is no longer that
#: process (``up`` was killed: SIGKILL, the OOM killer) stops by itself, so that nothing holds
#: the ports and the data directory's locks when ``up`` is started again
SUPERVISOR_ENV = "MAILSTACK_SUPERVISOR_PID"
#: how often a supervised daemon checks that its ``up`` is alive (seconds)
ORPHAN_CHECK = 1.0


async def stop_when_orphaned(stop: asyncio.Event, log: logging.Logger) -> None:
    """Set ``stop`` once the ``mailstack up`` that started this daemon is gone. The variable
    is taken out of the environment: a process this daemon starts has another parent."""
    want = os.environ.pop(SUPERVISOR_ENV, "")
    if not want.isdigit():
        return
    while not stop.is_set():
        if os.getppid() != int(want):
            log.warning("mailstack up (pid %s) is gone: stopping", want)
            stop.set()
            return
        await asyncio.sleep(ORPHAN_CHECK)


def run(name: str, cfg: Config) -> int:
    """Run daemon ``name`` until SIGTERM/SIGINT; returns the process exit code."""
    private_umask()  # also for daemons forked without the CLI (the test fork server)
    name = ALIASES.get(name, name)
    setup_logging(name, cfg.server.log_level)
    serve = load_serve(name)
    if cfg.server.event_loop == "uvloop":
        install_uvloop()
    testhooks.install()
    if cfg.chaos.file:  # runtime faults (test stacks)
        from . import chaos

        chaos.install(cfg)
    raise_nofile_limit()
    configure_allocator()
    log = logging.getLogger(f"mailstack.{name}")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("event loop: %s", type(loop).__module__.partition(".")[0])
        trimmer = asyncio.create_task(Trimmer().run())
        orphan = asyncio.create_task(stop_when_orphaned(stop, log))
        # the modules, functions and configuration loaded by now live as long as the process:
        # frozen, a full collection no longer walks them (in a busy imap daemon one took
        # 17-82 ms of the event loop, most of it those objects)
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        watcher = loopwatch.start()  # MAILSTACK_LOOP_WATCH: event-loop stalls per command
        try:
            await serve(cfg, stop)
        finally:
            trimmer.cancel()
            orphan.cancel()
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    try:
        asyncio.run(main())
    except BindError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        pass
    log.info("stopped")
    return 0
