"""Accounts: ``<data_dir>/users``, one ``address:argon2id-hash`` a line, replaced atomically.

Daemons hold a :class:`UserDB` that re-reads the file when its mtime, size or inode changes,
so ``mailstack user add`` takes effect without a restart. Password checks run argon2 in a
worker thread so the event loop keeps serving other clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ..runtime.fsutil import atomic_write

# argon2id with OWASP's parameters (19 MiB, 2 passes, 1 lane): ~20 ms a check. A mail server
# checks passwords on every IMAP/POP3/SMTP login (Thunderbird opens up to 5 connections), so the
# RFC 9106 defaults (64 MiB, 4 lanes) would cost too much memory under concurrent logins.
# Hashes made with other parameters still verify (they are encoded in the hash).
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
#: at most this many hash computations at once (bounds memory under a login storm)
_hash_slots = threading.BoundedSemaphore(4)

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
    with _hash_slots:
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

    #: how long a stat() of the file is trusted. 0: every lookup stats the file (3.4 µs instead
    #: of 0.6 µs, measured), so a removed account is refused at once, not a second later
    RECHECK = 0.0
    #: how long a successful password check is remembered (0 disables)
    AUTH_CACHE_TTL = 300.0

    def __init__(self, path: Path) -> None:
        self.path = path
        self._snap = _Snapshot((-1, 0, 0), {})
        self._checked = -1e9
        self._lock = threading.Lock()
        self._auth_cache: dict[bytes, float] = {}

    def _load(self, *, fresh: bool = False) -> dict[str, str]:
        """The current accounts; thread-safe (daemons call it from worker threads too).

        ``fresh``: stat the file now even within RECHECK (used when a lookup missed).
        """
        if not fresh and time.monotonic() - self._checked < self.RECHECK:
            return self._snap.users
        with self._lock:
            if not fresh and time.monotonic() - self._checked < self.RECHECK:
                return self._snap.users  # another thread refreshed it meanwhile
            try:
                st = os.stat(self.path)
                key = (st.st_mtime_ns, st.st_size, st.st_ino)
            except FileNotFoundError:
                key = (0, 0, 0)
            if key != self._snap.key:
                self._snap = _Snapshot(key, self._parse() if key != (0, 0, 0) else {})
            self._checked = time.monotonic()  # only once the snapshot is current
        return self._snap.users

    def _parse(self) -> dict[str, str]:
        users: dict[str, str] = {}
        for line in self.path.read_text("utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            addr, _, hashed = line.partition(":")
            users[addr.lower()] = hashed
        return users

    def _get(self, address: str) -> str | None:
        """The stored hash; a miss re-checks the file at once (an account just added must not
        wait for RECHECK: a stat costs microseconds)."""
        hashed = self._load().get(address)
        if hashed is None:
            hashed = self._load(fresh=True).get(address)
        return hashed

    def exists(self, address: str) -> bool:
        return self._get(address.lower()) is not None

    def list(self) -> list[str]:
        return sorted(self._load())

    def check_password(self, address: str, password: str) -> bool:
        """Blocking password check (argon2); always spends the hashing time."""
        return _verify(self._get(address.strip().lower()) or _DUMMY_HASH, password) \
            and self.exists(address.strip())

    async def authenticate(self, address: str, password: str) -> bool:
        """Look the account up here, hash in a worker thread (argon2 takes tens of ms).

        Successful checks are remembered for AUTH_CACHE_TTL seconds (like Dovecot's
        auth_cache), keyed by a keyed hash of address, password and stored hash — so a changed
        password or a deleted user misses at once, and no password is kept in memory.
        """
        addr = address.strip().lower()
        if addr != address.lower():
            addr = ""  # a padded name is no account's name: refused like a wrong password
        hashed = self._load(fresh=True).get(addr)  # a stat: a changed password counts at once
        token = hmac.new(_CACHE_KEY, f"{addr}\0{password}\0{hashed}".encode("utf-8",
                         "surrogatepass"), hashlib.sha256).digest()
        now = time.monotonic()
        if hashed is not None and self._auth_cache.get(token, 0.0) > now:
            return True
        ok = await asyncio.to_thread(_verify, hashed or _DUMMY_HASH, password)
        if ok and hashed is not None:
            if len(self._auth_cache) > 10_000:
                self._auth_cache = {k: v for k, v in self._auth_cache.items() if v > now}
            self._auth_cache[token] = now + self.AUTH_CACHE_TTL
            return True
        return False

    # -- changes (used by `mailstack user`) --------------------------------------------------
    @contextlib.contextmanager
    def _editing(self) -> Iterator[dict[str, str]]:
        """Read-modify-write under an exclusive lock (two `mailstack user` commands at once
        must not lose each other's change); the file is replaced atomically on success."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            users = dict(self._load(fresh=True))
            yield users
            body = "".join(f"{a}:{h}\n" for a, h in sorted(users.items()))
            atomic_write(self.path, body.encode(), mode=0o600)
            self._checked = -1e9

    def add(self, address: str, password: str) -> str:
        addr = normalize_address(address)
        hashed = hash_password(password)  # before taking the lock: it takes tens of ms
        with self._editing() as users:
            if addr in users:
                raise UserError(f"{addr} exists already; use `mailstack user passwd {addr}`")
            users[addr] = hashed
        return addr

    def set_password(self, address: str, password: str) -> None:
        addr = normalize_address(address)
        hashed = hash_password(password)
        with self._editing() as users:
            if addr not in users:
                raise UserError(f"no user {addr}; add it with `mailstack user add {addr}`")
            users[addr] = hashed

    def put_hash(self, address: str, hashed: str) -> str:
        """Create or replace an account with an already computed hash (test harnesses use
        cheap argon2 parameters, which verify like any other)."""
        addr = normalize_address(address)
        with self._editing() as users:
            users[addr] = hashed
        return addr

    def delete(self, address: str) -> None:
        addr = normalize_address(address)
        with self._editing() as users:
            if users.pop(addr, None) is None:
                raise UserError(f"no user {addr}")


_DUMMY_HASH = _hasher.hash("mailstack-dummy-password")
_CACHE_KEY = os.urandom(32)  # per process: cache tokens mean nothing outside it


def resolve_recipient(users: UserDB, local_domains: tuple[str, ...], address: str,
                      postmaster: str = "") -> str | None:
    """The account a local recipient delivers to, or None.

    ``user+tag@domain`` falls back to ``user@domain`` (sub-addressing, RFC 5233).
    ``postmaster@<local domain>`` (RFC 5321 §4.5.1 requires it) always has an account: see
    :func:`postmaster_account`.
    """
    from ..smtp.address import AddressError, account_key, parse_mailbox

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
    if base.lower() == "postmaster":
        return postmaster_account(users, local_domains, mbox.domain_lower, postmaster)
    return None


def postmaster_account(users: UserDB, local_domains: tuple[str, ...], domain: str,
                       configured: str = "") -> str | None:
    """Who gets mail for ``postmaster@domain`` when no such account exists, in this order:
    ``[server] postmaster``; ``postmaster@<first domain>``; the first account of ``domain``,
    then of the first domain, then any (alphabetically, as ``mailstack user list`` shows them).
    None only while there is no account at all."""
    first = local_domains[0] if local_domains else domain
    for candidate in (configured.lower(), f"postmaster@{first}"):
        if candidate and users.exists(candidate):
            return candidate
    accounts = users.list()
    for dom in (domain, first):
        mine = [a for a in accounts if a.rpartition("@")[2] == dom]
        if mine:
            return mine[0]
    return accounts[0] if accounts else None
