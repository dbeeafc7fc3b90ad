"""Failed-login throttling shared by SMTP AUTH, IMAP and POP3.

Policy: failures are counted per client address (``ip:<addr>``) and per account
(``user:<account>``). The first ``free`` failures are answered at once; once either count is
above ``free``, each failure is answered only after a delay of 0.5 s that doubles with every
further failure, up to ``max_delay``. A successful login
clears the client address's count (not the account's: a distributed guesser must not get fresh
attempts each time the real user logs in). A count is forgotten after ``forget_after`` seconds
without a failure.

Where the counts live: the mta, imap and pop3 daemons are separate processes, so the counts are
kept in ``<data_dir>/state/auth-failures.db``, a small SQLite database (WAL mode, busy_timeout;
file 0600 in a 0700 directory) that every daemon opens. Guesses spread over the three protocols
therefore share one budget, and restarting a daemon forgets nothing. SQLite gives an atomic
read-modify-write across processes, crash safety and indexed look-ups from the standard library;
a flat file would need its own locking and rewriting, and a daemon to own the counts would be one
more process to run. WAL needs the processes on one host (docker-compose volumes are); it does
not work on network file systems. Rows use wall-clock time so they mean the same in every
process and after a restart.

Cost (measured on the development machine, ~90,000 rows): recording a failure (two keys, one
write transaction) takes ~30 µs median, but up to a few ms when the commit runs a WAL checkpoint
(fsync) or waits for another daemon's write; so it runs on a dedicated worker thread and never
stalls the event loop (~135 µs per failure including the hop, nothing next to the delay or the
password hash). A success first reads the client's row directly (~3-6 µs; WAL readers never wait
for writers) and only when a count exists deletes it on the worker thread (~100 µs), so the
common login takes no write lock and still clears counts that another daemon recorded.

Size: every 1,000 failures recorded by a process, rows older than ``forget_after`` are removed
and, beyond ``max_keys`` rows, those with the fewest failures go first (an address spray leaves
single-failure rows, while a targeted account keeps its high count).

If the database cannot be opened or fails later (read-only directory, corrupt file, full disk),
the throttle logs one warning and keeps the counts in this process's memory instead: the
throttle never makes a login fail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from ..runtime.logsafe import safe

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("mailstack.auth")

T = TypeVar("T")
BASE_DELAY = 0.5
PRUNE_EVERY = 1000


def account_key(name: str) -> str:
    """The key failures against a login name are counted under: the account it would look up
    (``"  Alice@x "`` counts against ``alice@x``, so padding cannot start a fresh count)."""
    return "user:" + name.strip().lower()


def db_path(cfg: Config) -> Path:
    """Where the daemons of one data directory keep their shared failure counts."""
    return cfg.data_dir / "state" / "auth-failures.db"


def forget_all(path: Path, conn: sqlite3.Connection | None = None) -> None:
    """Forget every failed-login count in the shared database at ``path`` (a test stack's
    ``reset()``; ``conn``: a connection to it to reuse); the daemons keep their connections and
    read the empty table at once."""
    if conn is None and not path.exists():
        return
    own = conn is None
    db = conn if conn is not None else connect_counts(path)
    try:
        if db.execute("SELECT 1 FROM failures LIMIT 1").fetchone():  # a read: no lock
            db.execute("DELETE FROM failures")
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
    finally:
        if own:
            db.close()


def connect_counts(path: Path) -> sqlite3.Connection:
    """A connection to the shared counts as the daemons open it (no fsync per commit)."""
    conn = sqlite3.connect(path, timeout=2.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=2000")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class _Store(Protocol):
    def counts(self, keys: Sequence[str], cutoff: float) -> list[int]: ...
    def bump(self, keys: Sequence[str], now: float, cutoff: float) -> list[int]: ...
    def clear(self, keys: Sequence[str]) -> None: ...
    def prune(self, cutoff: float, max_keys: int) -> None: ...
    def close(self) -> None: ...


class _MemoryStore:
    """Counts in this process only (no path given, or the database is unusable)."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[int, float]] = {}

    def counts(self, keys: Sequence[str], cutoff: float) -> list[int]:
        out = []
        for k in keys:
            count, last = self._rows.get(k, (0, 0.0))
            out.append(count if last > cutoff else 0)
        return out

    def bump(self, keys: Sequence[str], now: float, cutoff: float) -> list[int]:
        new = [c + 1 for c in self.counts(keys, cutoff)]
        for k, c in zip(keys, new, strict=True):
            self._rows[k] = (c, now)
        return new

    def clear(self, keys: Sequence[str]) -> None:
        for k in keys:
            self._rows.pop(k, None)

    def prune(self, cutoff: float, max_keys: int) -> None:
        rows = {k: v for k, v in self._rows.items() if v[1] > cutoff}
        if len(rows) > max_keys:
            keep = sorted(rows.items(), key=lambda kv: kv[1], reverse=True)[:max_keys * 9 // 10]
            rows = dict(keep)
        self._rows = rows

    def close(self) -> None:
        pass


class _SQLiteStore:
    """Counts in a SQLite database shared by every daemon of the data directory."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))  # mode before use
        os.chmod(path, 0o600)  # umask, or a file made by hand; -wal and -shm copy this mode
        self._lock = threading.Lock()
        self._write = self._connect(path)
        try:
            self._write.execute("PRAGMA journal_mode=WAL")
            self._write.execute("PRAGMA synchronous=NORMAL")  # a lost last commit is harmless
            self._write.execute(
                "CREATE TABLE IF NOT EXISTS failures (key TEXT PRIMARY KEY, "
                "count INTEGER NOT NULL, last REAL NOT NULL) WITHOUT ROWID")
            self._write.execute("CREATE INDEX IF NOT EXISTS failures_last ON failures (last)")
            self._read = self._connect(path)
            self._read.execute("SELECT count(*) FROM failures WHERE key = ''").fetchone()
        except BaseException:
            self._write.close()
            raise

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        # autocommit (transactions are explicit); used from the loop thread and the worker
        conn = sqlite3.connect(path, timeout=2.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=2000")
        return conn

    def counts(self, keys: Sequence[str], cutoff: float) -> list[int]:
        out = []
        for k in keys:
            row = self._read.execute("SELECT count, last FROM failures WHERE key = ?",
                                     (k,)).fetchone()
            out.append(row[0] if row and row[1] > cutoff else 0)
        return out

    def bump(self, keys: Sequence[str], now: float, cutoff: float) -> list[int]:
        with self._lock:
            db = self._write
            db.execute("BEGIN IMMEDIATE")  # busy: raises before any transaction is open
            try:
                out = []
                for k in keys:
                    db.execute(
                        "INSERT INTO failures (key, count, last) VALUES (?, 1, ?) "
                        "ON CONFLICT (key) DO UPDATE SET last = excluded.last, "
                        "count = CASE WHEN last > ? THEN count + 1 ELSE 1 END", (k, now, cutoff))
                    out.append(db.execute("SELECT count FROM failures WHERE key = ?",
                                          (k,)).fetchone()[0])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return out

    def clear(self, keys: Sequence[str]) -> None:
        with self._lock:
            self._write.executemany("DELETE FROM failures WHERE key = ?", [(k,) for k in keys])

    def prune(self, cutoff: float, max_keys: int) -> None:
        with self._lock:
            db = self._write
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM failures WHERE last <= ?", (cutoff,))
                rows = db.execute("SELECT count(*) FROM failures").fetchone()[0]
                if rows > max_keys:
                    db.execute("DELETE FROM failures WHERE key IN (SELECT key FROM failures "
                               "ORDER BY count, last LIMIT ?)", (rows - max_keys * 9 // 10,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._read.close()
        self._write.close()


def _busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` is SQLite's "database is locked/busy" (transient), not damage."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.OperationalError) and code is not None \
        and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class AuthThrottle:
    """Failed-login counts and delays; shared through ``path`` when given (see module doc)."""

    def __init__(self, free: int = 3, max_delay: float = 15.0, forget_after: float = 900.0,
                 clock: Callable[[], float] = time.time, *, path: Path | None = None,
                 max_keys: int = 100_000) -> None:
        self.free = free
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_keys = max_keys
        self.path = path
        self._clock = clock
        self._bumps = 0
        self._store: _Store = _MemoryStore()
        #: where an operation counts while the shared database is busy (see :meth:`_use`)
        self._spill: _MemoryStore | None = None
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        if path is not None:
            try:
                self._store = _SQLiteStore(path)
            except (OSError, sqlite3.Error) as exc:
                log.warning("failed-login counts kept per process: cannot use %s: %s", path, exc)
            else:
                self._worker = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="authlimit")

    @classmethod
    def for_config(cls, cfg: Config) -> AuthThrottle:
        """The throttle of one daemon, sharing its counts with the others through the data dir."""
        return cls(cfg.server.auth_failures_free, float(cfg.server.auth_max_delay),
                   path=db_path(cfg))

    @property
    def shared(self) -> bool:
        """True while the counts live in the shared database."""
        return isinstance(self._store, _SQLiteStore)

    def _use(self, op: Callable[[_Store], T]) -> T:
        try:
            return op(self._store)
        except sqlite3.Error as exc:
            if not self.shared:
                raise
            if _busy(exc):
                # another process held the database past the busy timeout (a loaded machine):
                # this one operation counts in this process; the shared counts are used again
                # from the next one (a lock is no reason to stop sharing them for good)
                log.warning("failed-login counts: %s is busy (%s): counted in this process "
                            "this time", self.path, exc)
                if self._spill is None:
                    self._spill = _MemoryStore()
                return op(self._spill)
            log.warning("failed-login counts kept per process from now on: %s: %s",
                        self.path, exc)
            broken, self._store = self._store, _MemoryStore()
            try:
                broken.close()
            except sqlite3.Error:
                pass
            return op(self._store)

    def _cutoff(self) -> float:
        return self._clock() - self.forget_after

    def failures(self, key: str) -> int:
        return self._use(lambda s: s.counts([key], self._cutoff()))[0]

    def delay(self, count: int) -> float:
        """Seconds to wait before answering a failure when the worst count (this failure
        included) is ``count``: none for the first ``free``."""
        if count <= self.free:
            return 0.0
        return min(self.max_delay, BASE_DELAY * 2.0 ** min(count - self.free - 1, 40))

    def delay_for(self, *keys: str) -> float:
        """Seconds to wait before answering a failed attempt from/for these keys."""
        cutoff = self._cutoff()
        return self.delay(max(self._use(lambda s: s.counts(keys, cutoff)), default=0))

    def record_failure(self, *keys: str) -> int:
        """Count one failure for each key; returns the highest count (blocking)."""
        now = self._clock()
        counts = self._use(lambda s: s.bump(keys, now, now - self.forget_after))
        self._bumps += 1
        if self._bumps % PRUNE_EVERY == 0:
            self._use(lambda s: s.prune(now - self.forget_after, self.max_keys))
        return max(counts, default=0)

    def clear(self, *keys: str) -> None:
        """Forget the counts of these keys (blocking)."""
        self._use(lambda s: s.clear(keys))

    async def _run(self, fn: Callable[..., T], *args: str) -> T:
        if self._worker is None or not self.shared:
            return fn(*args)  # memory only: no I/O
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def fail(self, client: str, account: str, protocol: str) -> None:
        """Record a failure, log it, and sleep the growing delay."""
        worst = await self._run(self.record_failure, f"ip:{client}", account_key(account))
        delay = self.delay(worst)
        log.warning("%s auth failed for '%s' from %s (delay %.1fs)", protocol,
                    safe(account, 80), client, delay)
        if delay:
            await asyncio.sleep(delay)

    async def record_success(self, client: str) -> None:
        """Clear the client address's count, whichever daemon recorded it."""
        key = f"ip:{client}"
        if self.failures(key):  # a read: cheap, and never waits for another daemon's write
            await self._run(self.clear, key)

    def close(self) -> None:
        """Finish queued writes and close the database; later calls count in memory."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(wait=True)
        store, self._store = self._store, _MemoryStore()
        store.close()
