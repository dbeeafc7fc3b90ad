"""A full disk delays mail, never loses it or shows half a message (data dir on a small tmpfs)."""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import os
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailstack.config import Config
from mailstack.store.maildir import Maildir, mailbox_path
from mailstack.tls import client_context, ensure_tls_files

from ..conftest import add_user, running


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


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


async def test_disk_full_is_452_and_imap_no_then_recovers(config_factory, small_fs: Path) -> None:
    cfg: Config = config_factory(f'[server]\ndata_dir = "{small_fs / "data"}"\n')
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

    async with running("mda", cfg), running("mta", cfg), running("imap", cfg):
        filler = fill(small_fs)
        with pytest.raises(smtplib.SMTPDataError) as err:
            await asyncio.to_thread(submit)
        assert err.value.smtp_code == 452 and b"4.3.1" in err.value.smtp_error
        typ, data = await asyncio.to_thread(append)
        assert typ == "NO" and b"OVERQUOTA" in data[0]
        complete_files(box)
        assert box.scan() == []
        os.unlink(filler)  # space again: everything works
        await asyncio.to_thread(submit)
        typ, _ = await asyncio.to_thread(append)
        assert typ == "OK"
        for _ in range(100):
            if len(box.scan()) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(box.scan()) == 2
        complete_files(box)
