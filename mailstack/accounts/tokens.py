"""App tokens for HTTP Bearer auth: ``<data_dir>/tokens``, one ``address:sha256-hex`` a line.

A token is 32 random bytes (``mst_`` + base64url), shown once by ``mailstack user token``;
only its SHA-256 is stored (a random token needs no slow hash). The file is re-read when it
changes, like the users file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
import threading
from pathlib import Path

from ..runtime.fsutil import atomic_write

PREFIX = "mst_"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenDB:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: tuple[int, int, int] = (-1, 0, 0)
        self._by_digest: dict[str, str] = {}
        self._lock = threading.Lock()

    def _load(self) -> dict[str, str]:
        try:
            st = os.stat(self.path)
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            key = (0, 0, 0)
        if key != self._key:
            with self._lock:
                table: dict[str, str] = {}
                if key != (0, 0, 0):
                    for line in self.path.read_text("utf-8").splitlines():
                        addr, _, dig = line.strip().partition(":")
                        if addr and len(dig) == 64:
                            table[dig] = addr
                self._by_digest, self._key = table, key
        return self._by_digest

    def owner(self, token: str) -> str | None:
        """The address a token belongs to, or None."""
        if not token.startswith(PREFIX) or len(token) > 200:
            return None
        dig = digest(token)
        for known, addr in self._load().items():  # constant time per entry
            if hmac.compare_digest(known, dig):
                return addr
        return None

    def create(self, address: str) -> str:
        """A new token for ``address`` (its other tokens stay valid)."""
        token = PREFIX + secrets.token_urlsafe(32)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            old = ""
            with contextlib.suppress(FileNotFoundError):
                old = self.path.read_text("utf-8")
            atomic_write(self.path, (old + f"{address}:{digest(token)}\n").encode(), mode=0o600)
        return token

    def revoke(self, address: str) -> int:
        """Remove every token of ``address``; returns how many."""
        if not self.path.exists():
            return 0  # no token was ever made: nothing to lock or write
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                lines = self.path.read_text("utf-8").splitlines()
            except FileNotFoundError:
                return 0
            keep = [ln for ln in lines if ln.partition(":")[0] != address]
            atomic_write(self.path, "".join(f"{ln}\n" for ln in keep).encode(), mode=0o600)
            return len(lines) - len(keep)
