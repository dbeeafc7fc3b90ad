"""Free TCP ports for test stacks, chosen outside the kernel's ephemeral range.

Asking the kernel for port 0 hands out a port from the ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 by default) — the same range every
outgoing connection takes its local port from. Between picking such a port and the daemon
binding it, any client on the machine may get it as its source port, and the daemon fails with
EADDRINUSE (seen on a busy machine running load tests beside the suite). Ports picked at random
below that range, checked by binding, are never taken that way.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOWEST = 10_000
_random = random.Random()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing listens on or is connected from right now."""
    top = _ephemeral_start() - 1
    for _ in range(200 if top - _LOWEST > 1000 else 0):
        port = _random.randint(_LOWEST, top)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # no room below the ephemeral range: let the kernel choose
        s.bind((host, 0))
        return int(s.getsockname()[1])
