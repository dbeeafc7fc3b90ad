"""The mda's copy log only where the file system keeps metadata changes in order through a
crash (mailstack/mda/copylog.py: the batch marker relies on it): a real ext4 with a journal
uses it, a tmpfs does not (and neither does this project's own test machine, an ext4 without
a journal: tests/conftest.py sets MAILSTACK_TEST_ORDERED_METADATA for every other test)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from mailstack.config import Config
from mailstack.mda.copylog import CopyLog, read_pending, scan
from mailstack.mta.lmtp_client import LMTPConnection
from mailstack.runtime.fsutil import metadata_order
from mailstack.runtime.testhooks import ORDERED_ENV

from ..conftest import add_user, running


async def _deliver(cfg: Config, envid: str) -> int:
    conn = await LMTPConnection.open("127.0.0.1", cfg.port("mda", "lmtp"), "t")
    res = await conn.deliver(envid, "s@x.org", ["alice@example.test"],
                             b"Subject: fs\r\n\r\nbody\r\n")
    await conn.quit()
    return res.replies[0].code


async def test_a_journaled_ext4_gets_the_copy_log(config_factory, journaled_ext4: Path) -> None:
    assert metadata_order(journaled_ext4)[0]
    cfg: Config = config_factory(f'[server]\ndata_dir = "{journaled_ext4 / "data"}"\n'
                                 '[mda]\ncopy_log_size = "1MiB"\n')
    add_user(cfg, "alice@example.test")
    async with running("mda", cfg, env={ORDERED_ENV: ""}) as mda:  # the suite sets it
        await mda.wait_log("copy log ready")
        assert "test hook" not in mda.log()
        assert await _deliver(cfg, "QEXT4") == 250
        copies = cfg.data_dir / "mda" / "copies"
        records = [r for seg in ("0.seg", "1.seg") for r in scan((copies / seg).read_bytes())[0]]
        assert [(r.envid, r.data.endswith(b"body\n")) for r in records] == [("QEXT4", True)]
        deadline = time.monotonic() + 15  # the checkpointer's syncfs, once a second
        while read_pending(copies):
            assert time.monotonic() < deadline, "the checkpoint never moved past the copy"
            await asyncio.sleep(0.1)


async def test_a_tmpfs_gets_none_and_says_why(config_factory, small_fs: Path) -> None:
    assert metadata_order(small_fs) == (False, "tmpfs")
    cfg: Config = config_factory(f'[server]\ndata_dir = "{small_fs / "data"}"\n')
    add_user(cfg, "alice@example.test")
    async with running("mda", cfg, env={ORDERED_ENV: ""}) as mda:  # the suite sets it
        assert await _deliver(cfg, "QTMPFS") == 250
        assert "copy log off" in mda.log() and "on tmpfs, which may not keep" in mda.log()
    assert not CopyLog.exists(cfg.data_dir / "mda" / "copies")
