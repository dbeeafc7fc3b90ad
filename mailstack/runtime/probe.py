"""Is a daemon ready? One greeting check for every caller, and a container health probe.

:func:`read_greeting` and :data:`EXPECT` are the check itself: read what a daemon says first
(for the http daemon, the answer to ``GET /health``) and compare it with its protocol's greeting;
:func:`retry` is the one wait for it. ``mailstack health NAME [--wait SECONDS]`` (through the
config: :func:`mailstack.runtime.health.check`) and ``mailstack up``'s wait for its children
use them, and so does the probe that runs every second or two as a container health check:
``python3 -m mailstack.runtime.probe PORT [--http] [--wait SECONDS]`` (the standard library
only, no config: connect to ``127.0.0.1:PORT`` and exit 0 when the greeting is a daemon's). The
probe sends no command, so the daemons log it at debug level only. With ``--wait`` a daemon not
answering yet is tried again every 50 ms for up to that long: Docker Engine before 25 runs the
first health check one interval after the start, and a probe that waits there reports healthy
as soon as the daemon answers instead of one more interval later.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable

#: the http daemon's health path (answered 200 and logged at debug there)
HEALTH_PATH = "/health"
#: what each daemon says first when it is ready
EXPECT = {"mta": b"220", "mda": b"220", "imap": b"* OK", "pop3": b"+OK",
          "http": b"HTTP/1.1 200"}
_REQUEST = (f"GET {HEALTH_PATH} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: mailstack-health\r\n"
            "Connection: close\r\n\r\n").encode()


def read_greeting(sock: socket.socket, http: bool = False) -> bytes:
    """The first octets a daemon sends on ``sock`` (with ``http``: after ``GET /health``)."""
    if http:
        sock.sendall(_REQUEST)
    return sock.recv(256)


def retry(attempt: Callable[[], bool], wait: float, stop: Callable[[], bool] = lambda: False,
          step: float = 0.05) -> bool:
    """Call ``attempt`` until it returns True (at least once), every ``step`` seconds for up to
    ``wait`` seconds; False when the time runs out or ``stop()`` says to give up."""
    until = time.monotonic() + wait
    while True:
        if attempt():
            return True
        if stop() or time.monotonic() + step >= until:
            return False
        time.sleep(step)


def probe(port: int, http: bool = False, timeout: float = 3.0, wait: float = 0.0) -> bool:
    """True when the daemon on ``port`` greets; tried again every 50 ms for up to ``wait``
    seconds (each try's time limit is what is left of ``max(wait, timeout)``)."""
    deadline = time.monotonic() + max(wait, timeout)

    def attempt() -> bool:
        left = max(0.2, deadline - time.monotonic())
        try:
            with socket.create_connection(("127.0.0.1", port), left) as s:
                return read_greeting(s, http).startswith(tuple(EXPECT.values()))
        except OSError:
            return False
    return retry(attempt, wait)


USAGE = "usage: python3 -m mailstack.runtime.probe PORT [--http] [--wait SECONDS]"


def main(argv: list[str]) -> int:
    args = list(argv)
    wait = 0.0
    if "--wait" in args:
        i = args.index("--wait")
        try:
            wait = float(args[i + 1])
        except (IndexError, ValueError):
            print(USAGE, file=sys.stderr)
            return 2
        del args[i:i + 2]
    if not args or not args[0].isdigit() or any(a != "--http" for a in args[1:]):
        print(USAGE, file=sys.stderr)
        return 2
    return 0 if probe(int(args[0]), "--http" in args[1:], wait=wait) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
