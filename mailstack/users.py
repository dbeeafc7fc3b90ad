"""Accounts: ``<data_dir>/users``, one ``address:argon2id-hash`` a line, replaced atomically.

Daemons hold a :class:`UserDB` that re-reads the file when its mtime, size or inode changes,
so ``mailstack user add`` takes effect without a restart. Password checks run argon2 in a
worker thread so the event loop keeps serving other clients.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .fsutil import atomic_write

_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile defaults

_LOCAL_RE = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DOMAIN_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


class UserError(Exception):
    """A bad address or an account problem, with a message for the operator."""


def normalize_address(address: str) -> str:
    """Lower-case and validate an account address; raises UserError."""
    addr = address.strip().lower()
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain:
        raise UserError(f"{address!r} is not an address like alice@example.test")
    if not _LOCAL_RE.fullmatch(local) or "/" in local or len(local) > 64:
        raise UserError(f"{address!r}: the local part may hold letters, digits and . _ + - "
                        "(no leading, trailing or double dots)")
    if not _DOMAIN_RE.fullmatch(domain) or len(domain) > 253:
        raise UserError(f"{address!r}: {domain!r} is not a domain name")
    return addr


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def _verify(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class _Snapshot:
    key: tuple[int, int, int]
    users: dict[str, str]


class UserDB:
    """The users file, re-read when it changes on disk."""

    #: how long a stat() of the file is trusted (changes show up within this time)
    RECHECK = 1.0

    def __init__(self, path: Path) -> None:
        self.path = path
        self._snap = _Snapshot((0, 0, 0), {})
        self._checked = -1e9

    def _load(self) -> dict[str, str]:
        now = time.monotonic()
        if now - self._checked < self.RECHECK:
            return self._snap.users
        self._checked = now
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._snap = _Snapshot((0, 0, 0), {})
            return self._snap.users
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key != self._snap.key:
            users: dict[str, str] = {}
            for line in self.path.read_text("utf-8").splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                addr, _, hashed = line.partition(":")
                users[addr.lower()] = hashed
            self._snap = _Snapshot(key, users)
        return self._snap.users

    def exists(self, address: str) -> bool:
        return address.lower() in self._load()

    def list(self) -> list[str]:
        return sorted(self._load())

    def check_password(self, address: str, password: str) -> bool:
        """Blocking password check (argon2); always spends the hashing time."""
        hashed = self._load().get(address.strip().lower())
        if hashed is None:
            _verify(_DUMMY_HASH, password)  # same cost whether or not the user exists
            return False
        return _verify(hashed, password)

    async def authenticate(self, address: str, password: str) -> bool:
        return await asyncio.to_thread(self.check_password, address, password)

    # -- changes (used by `mailstack user`) --------------------------------------------------
    def _write(self, users: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(f"{a}:{h}\n" for a, h in sorted(users.items()))
        atomic_write(self.path, body.encode(), mode=0o600)
        self._checked = -1e9

    def add(self, address: str, password: str) -> str:
        addr = normalize_address(address)
        users = dict(self._load())
        if addr in users:
            raise UserError(f"{addr} exists already; use `mailstack user passwd {addr}`")
        users[addr] = hash_password(password)
        self._write(users)
        return addr

    def set_password(self, address: str, password: str) -> None:
        addr = normalize_address(address)
        users = dict(self._load())
        if addr not in users:
            raise UserError(f"no user {addr}; add it with `mailstack user add {addr}`")
        users[addr] = hash_password(password)
        self._write(users)

    def delete(self, address: str) -> None:
        addr = normalize_address(address)
        users = dict(self._load())
        if users.pop(addr, None) is None:
            raise UserError(f"no user {addr}")
        self._write(users)


_DUMMY_HASH = _hasher.hash("mailstack-dummy-password")


def resolve_recipient(users: UserDB, local_domains: tuple[str, ...], address: str) -> str | None:
    """The account a local recipient delivers to, or None.

    ``user+tag@domain`` falls back to ``user@domain`` (sub-addressing, RFC 5233).
    """
    from .address import AddressError, account_key, parse_mailbox

    try:
        mbox = parse_mailbox(address)
    except AddressError:
        return None
    if mbox.domain_lower not in local_domains or mbox.is_quoted:
        return None
    key = account_key(mbox)
    if users.exists(key):
        return key
    base = mbox.local.split("+", 1)[0]
    if base and base != mbox.local:
        key = f"{base.lower()}@{mbox.domain_lower}"
        if users.exists(key):
            return key
    return None
