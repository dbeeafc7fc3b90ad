"""Free TCP ports for test stacks, chosen outside the kernel's ephemeral range.

Asking the kernel for port 0 hands out a port from the ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 by default) — the same range every
outgoing connection takes its local port from. Between picking such a port and the daemon
binding it, any client on the machine may get it as its source port, and the daemon fails with
EADDRINUSE (seen on a busy machine running load tests beside the suite). Ports picked at random
below that range, checked by binding, are never taken that way. A port handed out is not
handed out again for the next RECENT picks of this process: a config asks for a dozen ports
before any daemon binds one, and two random picks of one free port would both pass the check.
Under pytest-xdist each worker (``PYTEST_XDIST_WORKER`` ``gwN`` of
``PYTEST_XDIST_WORKER_COUNT``) picks from its own slice of the range. Independent test runs on
one machine (two CI jobs, two checkouts) share the slices, so a pick is also reserved
machine-wide for :data:`RESERVE_FOR` seconds: a file named after the port in
:func:`reservations` (created exclusively, or taken over under ``flock`` once it is older than
that); another process skips a port reserved by someone else. Seen without it: a daemon of one
run failing with EADDRINUSE on the port another run had just picked.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

_LOWEST = 10_000
_random = random.Random()
RECENT = 4096
_given: deque[int] = deque(maxlen=RECENT)
_given_set: set[int] = set()
_lock = threading.Lock()
#: seconds a pick stays reserved for its process: longer than any stack takes to bind its ports
RESERVE_FOR = 300.0


def reservations() -> Path:
    """The directory of machine-wide port reservations (this user's, in the temp directory)."""
    return Path(tempfile.gettempdir()) / f"mailstack-test-ports-{os.getuid()}"


def _reserve(port: int) -> bool:
    """Reserve ``port`` machine-wide; False when another process holds it (a fresh file)."""
    folder = reservations()
    path = folder / str(port)
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return True  # created it: nobody else can have
    except FileExistsError:
        pass
    except OSError:
        return True  # no reservations possible here (read-only temp): the bind check only
    try:
        with open(path, "a") as f:  # an old reservation is taken over by one process only
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            if time.time() - os.fstat(f.fileno()).st_mtime < RESERVE_FOR:
                return False
            os.utime(path)
            return True
    except OSError:
        return True


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


def _span() -> tuple[int, int]:
    """The ports this process picks from: below the ephemeral range, its xdist worker's part."""
    low, top = _LOWEST, _ephemeral_start() - 1
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    try:
        count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    except ValueError:
        count = 1
    if count > 1 and worker[:2] == "gw" and worker[2:].isdigit():
        size = (top - low + 1) // count
        low += int(worker[2:]) % count * size
        top = low + size - 1
    return low, top


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing listens on or is connected from right now."""
    low, top = _span()
    for _ in range(200 if top - low > 1000 else 0):
        port = _random.randint(low, top)
        if port in _given_set:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        if _reserve(port):
            return _remember(port)
    with socket.socket() as s:  # no room below the ephemeral range: let the kernel choose
        s.bind((host, 0))
        return _remember(int(s.getsockname()[1]))


def compose_published(compose_file: Path) -> dict[str, int]:
    """The ``MAILSTACK_PUBLISH_<NAME>`` variables of a compose file, name → the port it defaults
    to (a standard port): a test or benchmark moves every one of them to a free port, including
    any a later version of the file adds."""
    text = compose_file.read_text()
    out: dict[str, int] = {}
    marker = "${MAILSTACK_PUBLISH_"
    start = text.find(marker)
    while start >= 0:
        name, sep, rest = text[start + len(marker):].partition(":-")
        default = rest.partition("}")[0]
        if sep and name.isalnum() and name.isupper() and default.isdigit():
            out[name] = int(default)
        start = text.find(marker, start + 1)
    return out
