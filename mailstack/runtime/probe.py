"""A container health probe that costs little: ``python3 -m mailstack.runtime.probe PORT``.

``mailstack health NAME`` loads the config to find a daemon's listener; a health check that
runs every second or two wants less (the standard library, no config): connect to
``127.0.0.1:PORT``, read the greeting (or ask for ``/health`` when ``--http`` is given) and exit
0 when it is the protocol's. The probe sends no command, so the daemons log it at debug level
only, as they do for ``mailstack health``.
"""

from __future__ import annotations

import socket
import sys

GREETINGS = (b"220", b"* OK", b"+OK", b"HTTP/1.1 200")


def probe(port: int, http: bool = False, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout) as s:
            if http:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n"
                          b"User-Agent: mailstack-health\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(GREETINGS)
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if not argv or not argv[0].isdigit():
        print("usage: python3 -m mailstack.runtime.probe PORT [--http]", file=sys.stderr)
        return 2
    return 0 if probe(int(argv[0]), "--http" in argv[1:]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
