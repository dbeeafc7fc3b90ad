"""AuthThrottle: the delay policy, counts shared through the database, pruning and fallback."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from mailstack.accounts import authlimit
from mailstack.accounts.authlimit import AuthThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "state" / "auth-failures.db"


@pytest.mark.parametrize("shared", [False, True])
def test_delay_grows_after_free_failures_and_is_capped(db: Path, shared: bool) -> None:
    t = AuthThrottle(free=3, max_delay=4.0, path=db if shared else None)
    assert t.shared is shared
    delays = []
    for _ in range(7):
        t.record_failure("ip:192.0.2.1", "user:alice@example.test")
        delays.append(t.delay_for("ip:192.0.2.1", "user:alice@example.test"))
    assert delays == [0.0, 0.0, 0.0, 0.5, 1.0, 2.0, 4.0]  # three free failures
    assert t.delay(10_000) == 4.0  # no float overflow after a long attack
    t.close()


def test_counts_are_shared_between_throttles_on_one_database(db: Path) -> None:
    smtp, imap = AuthThrottle(free=2, path=db), AuthThrottle(free=2, path=db)
    smtp.record_failure("ip:192.0.2.1", "user:alice@example.test")
    assert imap.record_failure("ip:192.0.2.1", "user:bob@example.test") == 2
    assert imap.failures("user:alice@example.test") == 1
    smtp.close()
    imap.close()


async def test_success_clears_the_client_wherever_it_failed(db: Path) -> None:
    smtp, imap = AuthThrottle(free=2, path=db), AuthThrottle(free=2, path=db)
    await smtp.fail("192.0.2.1", "Alice@example.test", "smtp PLAIN")
    await imap.record_success("192.0.2.1")
    assert smtp.failures("ip:192.0.2.1") == 0
    # the account's count stays: the real user's login must not reset a guesser's budget
    assert smtp.failures("user:alice@example.test") == 1
    smtp.close()
    imap.close()


def test_counts_survive_a_restart_until_forgotten(db: Path) -> None:
    clock = Clock()
    t = AuthThrottle(free=2, forget_after=900, clock=clock, path=db)
    t.record_failure("ip:192.0.2.1")
    t.record_failure("ip:192.0.2.1")
    t.close()
    t = AuthThrottle(free=2, forget_after=900, clock=clock, path=db)
    assert t.failures("ip:192.0.2.1") == 2
    clock.now += 901
    assert t.failures("ip:192.0.2.1") == 0
    assert t.record_failure("ip:192.0.2.1") == 1  # counting starts again
    t.close()


def test_database_file_is_private(db: Path) -> None:
    old = os.umask(0o022)
    try:
        t = AuthThrottle(path=db)
        t.record_failure("ip:192.0.2.1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    for extra in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if extra.exists():
            assert stat.S_IMODE(extra.stat().st_mode) == 0o600
    t.close()


def test_spray_of_addresses_is_bounded(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(authlimit, "PRUNE_EVERY", 50)
    t = AuthThrottle(free=3, path=db, max_keys=100)
    for _ in range(5):
        t.record_failure("user:alice@example.test")
    for i in range(1000):
        t.record_failure(f"ip:10.0.{i // 256}.{i % 256}")
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT count(*) FROM failures").fetchone()[0]
    assert rows <= 100 + 50
    assert t.failures("user:alice@example.test") == 5  # the targeted account is kept
    t.close()


def test_spray_bound_in_memory_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(authlimit, "PRUNE_EVERY", 50)
    t = AuthThrottle(max_keys=100)
    for i in range(1000):
        t.record_failure(f"ip:10.0.{i // 256}.{i % 256}")
    assert len(t._store._rows) <= 150  # type: ignore[attr-defined]


def test_corrupt_database_falls_back_to_memory(db: Path, caplog: pytest.LogCaptureFixture
                                               ) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not a database" * 100)
    caplog.set_level(logging.WARNING, "mailstack.auth")
    t = AuthThrottle(free=0, path=db)
    assert not t.shared
    assert t.record_failure("ip:192.0.2.1") == 1
    assert t.delay_for("ip:192.0.2.1") == 0.5
    assert len(caplog.records) == 1 and "per process" in caplog.records[0].message
    t.close()


def test_unusable_directory_falls_back_to_memory(db: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    db.parent.parent.mkdir(parents=True)
    db.parent.write_text("a file where the state directory belongs")
    caplog.set_level(logging.WARNING, "mailstack.auth")
    t = AuthThrottle(path=db)
    assert not t.shared and t.record_failure("ip:192.0.2.1") == 1
    assert len(caplog.records) == 1


async def test_a_database_error_later_switches_to_memory(db: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    t = AuthThrottle(free=5, path=db)
    caplog.set_level(logging.WARNING, "mailstack.auth")

    def broken(*_: object) -> list[int]:
        raise sqlite3.OperationalError("disk I/O error")

    t._store.bump = broken  # type: ignore[method-assign]
    await t.fail("192.0.2.1", "alice@example.test", "imap")  # the login is answered anyway
    assert not t.shared and t.failures("ip:192.0.2.1") == 1
    assert sum("per process" in r.message for r in caplog.records) == 1
    t.close()


def _hammer(path: str, n: int) -> None:
    t = AuthThrottle(path=Path(path))
    for _ in range(n):
        t.record_failure("ip:192.0.2.1")
    t.close()


def test_concurrent_processes_lose_no_failure(db: Path) -> None:
    AuthThrottle(path=db).close()  # create it once, like the first daemon
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(db), 200)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    t = AuthThrottle(path=db)
    assert t.failures("ip:192.0.2.1") == 600
    t.close()


def test_a_busy_database_is_no_reason_to_stop_sharing(db: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Another process holds the database past the busy timeout: that failure is counted in
    this process, and the next one goes to the shared database again (before, the first
    lock switched the daemon to per-process counts until its restart)."""
    t = AuthThrottle(free=2, path=db)
    other = AuthThrottle(free=2, path=db)
    caplog.set_level(logging.WARNING, "mailstack.auth")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        assert t.record_failure("ip:192.0.2.1") == 1  # waited out the busy timeout
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert t.shared
    assert any("is busy" in r.message for r in caplog.records)
    assert t.record_failure("ip:192.0.2.1") == 1  # the shared count: the busy one was apart
    assert other.failures("ip:192.0.2.1") == 1
    t.close()
    other.close()
