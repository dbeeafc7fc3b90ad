"""Unix stream sockets for local hand-offs (the mta → mda LMTP socket).

A unix socket is reachable only through the file system: mode 0600 in a 0700 directory lets
the account running the stack connect and nobody else, where a TCP port on loopback takes
connections from every local user. Paths longer than ``sun_path`` (108 octets) are reached
through ``/proc/self/fd/N/``, so a deep data directory works too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

#: sun_path holds 108 octets including the terminating NUL
_MAX_PATH = 107
SOCKET_MODE = 0o600


class SocketError(Exception):
    """The socket could not be opened; the message names the path and the cause."""


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """``path`` itself, or a short alias of it through an open descriptor of its directory."""
    if len(os.fsencode(path)) <= _MAX_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _in_use(path: Path) -> bool:
    """True when a server accepts connections on the socket file ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe, _address(path) as addr:
        try:
            probe.connect(addr)
        except OSError:
            return False
    return True


def listen(path: Path, mode: int = SOCKET_MODE, backlog: int = 1024) -> socket.socket:
    """A listening, non-blocking unix socket at ``path`` with ``mode``; a stale socket file
    left by a crashed server is replaced, a live one or any other file is an error."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        st = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketError(f"{path}: exists and is not a socket; remove it or change the path")
        if _in_use(path):
            raise SocketError(f"{path}: another server is listening there (a second mda?)")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _address(path) as addr:
            sock.bind(addr)
        os.chmod(path, mode)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise SocketError(f"{path}: cannot listen: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def remove(path: Path) -> None:
    """Remove the socket file at ``path`` after its server closed, unless another server has
    taken the path over meanwhile."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(path.lstat().st_mode) and not _in_use(path):
            path.unlink()


async def connect(path: Path) -> socket.socket:
    """A connected non-blocking socket to ``path``, for any path length; raises OSError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        with _address(path) as addr:
            await asyncio.get_running_loop().sock_connect(sock, addr)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_connection(path: Path, limit: int = 64 * 1024,
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_unix_connection`` for any path length; raises OSError."""
    return await asyncio.open_unix_connection(sock=await connect(path), limit=limit)


def connect_blocking(path: Path, timeout: float) -> socket.socket:
    """A connected blocking socket (health checks); raises OSError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with _address(path) as addr:
            sock.connect(addr)
    except BaseException:
        sock.close()
        raise
    return sock

