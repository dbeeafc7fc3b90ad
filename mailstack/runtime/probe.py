"""Is a daemon ready? One greeting check for every caller, and a container health probe.

:func:`read_greeting` and :data:`EXPECT` are the check itself: read what a daemon says first
(for autoconfig, the answer to ``GET /health``) and compare it with its protocol's greeting.
``mailstack health NAME`` (through the config: :func:`mailstack.runtime.health.check`) and
``mailstack up``'s wait for its children use them, and so does the probe that runs every
second or two as a container health check:
``python3 -m mailstack.runtime.probe PORT [--http]`` (the standard library only, no config:
connect to ``127.0.0.1:PORT`` and exit 0 when the greeting is a daemon's). The probe sends no
command, so the daemons log it at debug level only.
"""

from __future__ import annotations

import socket
import sys

#: the autoconfig daemon's health path (answered 200 and logged at debug there)
HEALTH_PATH = "/health"
#: what each daemon says first when it is ready
EXPECT = {"mta": b"220", "mda": b"220", "imap": b"* OK", "pop3": b"+OK",
          "autoconfig": b"HTTP/1.1 200"}
_REQUEST = (f"GET {HEALTH_PATH} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: mailstack-health\r\n"
            "Connection: close\r\n\r\n").encode()


def read_greeting(sock: socket.socket, http: bool = False) -> bytes:
    """The first octets a daemon sends on ``sock`` (with ``http``: after ``GET /health``)."""
    if http:
        sock.sendall(_REQUEST)
    return sock.recv(256)


def probe(port: int, http: bool = False, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout) as s:
            return read_greeting(s, http).startswith(tuple(EXPECT.values()))
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if not argv or not argv[0].isdigit():
        print("usage: python3 -m mailstack.runtime.probe PORT [--http]", file=sys.stderr)
        return 2
    return 0 if probe(int(argv[0]), "--http" in argv[1:]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
