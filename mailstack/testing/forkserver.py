"""A fork server for test stacks: imports the daemons once, then forks one process per daemon.

Starting ``python -m mailstack serve NAME`` costs most of a second of imports (aiosmtpd,
cryptography, argon2, dnspython); four of them at once take seconds on a small machine. This
process (``python -m mailstack.testing.forkserver``) pays that once per test session, then
forks a fresh child per daemon on request. Each child is a real, separate daemon process that
runs exactly what ``mailstack serve NAME --config FILE`` runs (:func:`mailstack.cli.main` with
those arguments: the config is loaded, ``$MAILSTACK_*`` overrides applied, uvloop installed by
:func:`mailstack.runtime.daemon.run`), with its output in a log file. The server itself never
starts a thread or an event loop, so forking is safe.

Protocol: one JSON object a line on stdin, one reply a line on stdout.

- ``{"op": "spawn", "name": "mta", "config": FILE, "log": FILE, "env": {...}}`` → ``{"pid": N}``
  (``env``, optional: variables set in the child's environment)
- ``{"op": "status", "pids": [...]}`` → ``{"exited": {"N": code, ...}}``
- ``{"op": "stop", "pids": [...], "timeout": 5}`` → SIGTERM, then SIGKILL after the timeout;
  ``{"exited": {...}}``
- ``{"op": "term", "pids": [...]}`` → SIGTERM and an answer at once (``{}``); ``status``
  tells when they are gone, ``stop`` ends what is left

When stdin closes (the test process ended, however it ended) every child is killed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import traceback

_children: dict[int, int | None] = {}  # pid → exit code (None: running)


def _reap() -> None:
    for pid, code in list(_children.items()):
        if code is not None:
            continue
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            _children[pid] = -1
            continue
        if done:
            _children[pid] = os.waitstatus_to_exitcode(status)


def _child(name: str, config: str, logfile: str, env: dict[str, str]) -> int:
    os.setsid()
    fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    random.seed()
    os.environ.update(env)
    from ..cli import main as cli_main

    return cli_main(["serve", name, "--config", config])


def _stop(pids: list[int], timeout: float) -> None:
    for pid in pids:
        if _children.get(pid, 0) is None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    while True:
        _reap()
        running = [p for p in pids if _children.get(p, 0) is None]
        if not running:
            return
        if time.monotonic() > deadline:
            for pid in running:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = float("inf")
        time.sleep(0.005)


def main() -> int:
    from ..runtime.daemon import available_daemons

    available_daemons()  # imports every daemon module: the point of this process
    import mailstack.cli
    try:  # what every child's first step (mailstack.runtime.daemon.run) imports next
        import uvloop  # noqa: F401
    except ImportError:
        pass
    # daemon.run's allocator set-up looks up libc with ctypes.util.find_library, which runs
    # `ldconfig -p` in a subprocess each time: once here, the children inherit the answer
    import ctypes.util
    import functools

    ctypes.util.find_library = functools.cache(ctypes.util.find_library)
    ctypes.util.find_library("c")
    mailstack.cli.build_parser()  # argparse's lazy imports and compiled patterns, inherited
    out = sys.stdout
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        op = req.get("op")
        reply: dict[str, object] = {}
        _reap()
        if op == "spawn":
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    code = _child(req["name"], req["config"], req["log"],
                                  dict(req.get("env") or {}))
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(code)
            _children[pid] = None
            reply = {"pid": pid}
        elif op == "term":
            for pid in [int(p) for p in req.get("pids", [])]:
                if _children.get(pid, 0) is None:
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
        elif op in ("status", "stop"):
            pids = [int(p) for p in req.get("pids", [])]
            if op == "stop":
                _stop(pids, float(req.get("timeout", 5)))
            reply = {"exited": {str(p): _children[p] for p in pids
                                if _children.get(p) is not None}}
            if op == "stop":
                for p in pids:
                    _children.pop(p, None)
        else:
            reply = {"error": f"unknown op {op!r}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    _stop([p for p, c in _children.items() if c is None], 2.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
