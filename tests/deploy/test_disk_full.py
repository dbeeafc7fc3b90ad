"""A full disk delays mail, never loses it or shows half a message: on a small tmpfs (root), and
with ENOSPC injected into the daemon processes (anyone, offline)."""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import os
import smtplib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailstack.config import Config
from mailstack.mta.queue import Spool
from mailstack.runtime.testhooks import DISK_FULL_ENV
from mailstack.runtime.tls import client_context, ensure_tls_files
from mailstack.store.maildir import Maildir, mailbox_path

from ..conftest import add_user, running


def fill(path: Path) -> Path:
    """Take every free byte of the filesystem holding ``path``."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return filler


def complete_files(box: Maildir) -> None:
    """Every visible message file has the size its name promises."""
    for msg in box.scan():
        assert msg.path(box.root).stat().st_size == msg.size, msg


async def full_disk_then_recovery(cfg: Config, full: Callable[[], object],
                                  free: Callable[[], object],
                                  env: dict[str, str] | None = None) -> None:
    """With the disk full: submission answers 452 4.3.1, IMAP APPEND NO [OVERQUOTA], no half
    message shows; with space again both work."""
    add_user(cfg, "alice@example.test", "pw")
    ctx = client_context(ensure_tls_files(cfg).ca)
    box = Maildir(mailbox_path(cfg.data_dir, "alice@example.test"))
    body = "Subject: big\r\n\r\n" + ("x" * 70 + "\r\n") * 300

    def submit() -> None:
        with smtplib.SMTP("127.0.0.1", cfg.port("mta", "submission"), timeout=10) as s:
            s.starttls(context=ctx)
            s.login("alice@example.test", "pw")
            s.sendmail("alice@example.test", ["alice@example.test"], body)

    def append() -> tuple[str, list]:
        c = imaplib.IMAP4("127.0.0.1", cfg.port("imap", "imap"), timeout=10)
        c.login("alice@example.test", "pw")
        try:
            return c.append("INBOX", None, None, body.encode())
        finally:
            c.logout()

    async with running("mda", cfg, env=env), running("mta", cfg, env=env), \
            running("imap", cfg, env=env):
        full()
        with pytest.raises(smtplib.SMTPDataError) as err:
            await asyncio.to_thread(submit)
        assert err.value.smtp_code == 452 and b"4.3.1" in err.value.smtp_error
        typ, data = await asyncio.to_thread(append)
        assert typ == "NO" and b"OVERQUOTA" in data[0]
        complete_files(box)
        assert box.scan() == []
        free()  # space again: everything works
        await asyncio.to_thread(submit)
        typ, _ = await asyncio.to_thread(append)
        assert typ == "OK"
        deadline = time.monotonic() + 20
        while len(box.scan()) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(box.scan()) == 2
        complete_files(box)


async def test_disk_full_is_452_and_imap_no_then_recovers(config_factory, small_fs: Path) -> None:
    """A real full file system (a 4 MiB tmpfs; needs the right to mount)."""
    cfg: Config = config_factory(f'[server]\ndata_dir = "{small_fs / "data"}"\n')
    filler: list[Path] = []
    await full_disk_then_recovery(cfg, lambda: filler.append(fill(small_fs)),
                                  lambda: os.unlink(filler[0]))


async def test_injected_enospc_is_452_and_imap_no_then_recovers(config_factory,
                                                                 tmp_path: Path) -> None:
    """The same without privileges: MAILSTACK_TEST_DISK_FULL makes the daemons' file writes
    fail with ENOSPC while the flag file exists."""
    flag = tmp_path / "disk-is-full"
    await full_disk_then_recovery(config_factory(), flag.touch, flag.unlink,
                                  env={DISK_FULL_ENV: str(flag)})


async def test_full_disk_at_the_mda_defers_then_delivers_once(config_factory,
                                                              tmp_path: Path) -> None:
    """Only the mda's disk is full: the mta queues the message (250), the mda answers
    452 4.3.1, the mta retries; once there is space the message arrives exactly once."""
    cfg: Config = config_factory()
    add_user(cfg, "alice@example.test", "pw")
    flag = tmp_path / "mda-disk-is-full"
    flag.touch()
    box = Maildir(mailbox_path(cfg.data_dir, "alice@example.test"))
    spool = Spool(cfg.data_dir / "queue")
    async with running("mda", cfg, env={DISK_FULL_ENV: str(flag)}) as mda, \
            running("mta", cfg) as mta:
        def send() -> None:
            with smtplib.SMTP("127.0.0.1", cfg.port("mta", "smtp"), timeout=10) as s:
                s.sendmail("bob@example.org", ["alice@example.test"],
                           "Subject: waits for space\r\n\r\nbody\r\n")
        await asyncio.to_thread(send)
        await mta.wait_log("452 4.3.1")
        await mda.wait_log("status=deferred (452 4.3.1")
        assert box.scan() == [] and len(spool.ids()) == 1
        complete_files(box)
        flag.unlink()
        deadline = time.monotonic() + 20
        while (box.scan() == [] or spool.ids()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # the entry left the queue: nothing can be delivered again; recheck once more
        assert spool.ids() == [] and len(box.scan()) == 1
        complete_files(box)
