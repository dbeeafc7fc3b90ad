"""Free TCP ports for test stacks, chosen outside the kernel's ephemeral range.

Asking the kernel for port 0 hands out a port from the ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 by default) — the same range every
outgoing connection takes its local port from. Between picking such a port and the daemon
binding it, any client on the machine may get it as its source port, and the daemon fails with
EADDRINUSE (seen on a busy machine running load tests beside the suite). Ports picked at random
below that range, checked by binding, are never taken that way. A port handed out is not
handed out again for the next RECENT picks of this process: a config asks for a dozen ports
before any daemon binds one, and two random picks of one free port would both pass the check.
"""

from __future__ import annotations

import random
import socket
import threading
from collections import deque
from pathlib import Path

_LOWEST = 10_000
_random = random.Random()
RECENT = 4096
_given: deque[int] = deque(maxlen=RECENT)
_given_set: set[int] = set()
_lock = threading.Lock()


def _remember(port: int) -> int:
    with _lock:
        if len(_given) == RECENT:
            _given_set.discard(_given[0])
        _given.append(port)
        _given_set.add(port)
    return port


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
        if port in _given_set:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return _remember(port)
    with socket.socket() as s:  # no room below the ephemeral range: let the kernel choose
        s.bind((host, 0))
        return _remember(int(s.getsockname()[1]))
