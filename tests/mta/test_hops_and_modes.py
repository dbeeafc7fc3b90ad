"""Mail-loop detection ([mta] max_hops, 554 5.4.6) and the file modes SECURITY.md promises for
the queue and the TLS keys."""

from __future__ import annotations

import asyncio
import smtplib
import stat
from pathlib import Path

import pytest

from mailstack.config import Config
from mailstack.mta.queue import Spool

from ..conftest import add_user, running
from ..e2e.helpers import mailstack


def hops(n: int) -> str:
    return "".join(f"Received: from hop{i}.example.org by hop{i + 1}.example.org; "
                   "Thu, 26 Nov 2026 10:00:00 +0000\r\n" for i in range(n))


def send(cfg: Config, message: str) -> None:
    with smtplib.SMTP("127.0.0.1", cfg.port("mta", "smtp"), timeout=10) as s:
        s.sendmail("bob@example.org", ["alice@example.test"], message)


async def test_more_than_max_hops_is_refused_as_a_loop(config_factory) -> None:
    cfg: Config = config_factory("[mta]\nmax_hops = 5\n")
    add_user(cfg, "alice@example.test")
    async with running("mta", cfg) as mta:
        # 4 Received headers: one hop left for ours
        await asyncio.to_thread(send, cfg, hops(4) + "Subject: 4 hops\r\n\r\nx\r\n")
        with pytest.raises(smtplib.SMTPDataError) as err:
            await asyncio.to_thread(send, cfg, hops(5) + "Subject: 5 hops\r\n\r\nx\r\n")
        assert err.value.smtp_code == 554 and err.value.smtp_error.startswith(b"5.4.6 ")
        assert b"5 Received headers" in err.value.smtp_error
        await mta.wait_log("message refused: 5 Received headers (mail loop?)")
    entries = Spool(cfg.data_dir / "queue").load_all()  # no mda runs: the first one waits
    assert [e.envelope.size for e in entries] and len(entries) == 1


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_queue_directory_0700_and_files_0600(config_factory) -> None:
    """A message waits in the queue (no mda runs) and is retried (a .state file appears)."""
    cfg: Config = config_factory('[mta]\nretry_initial = "0.2s"\n')
    add_user(cfg, "alice@example.test")
    queue = cfg.data_dir / "queue"
    async with running("mta", cfg) as mta:
        await asyncio.to_thread(send, cfg, "Subject: waits\r\n\r\nx\r\n")
        await mta.wait_log("deferred, 1 recipient(s) pending", count=2)
        files = sorted(queue.iterdir())
        assert {p.suffix for p in files} == {".msg", ".state"}, files
    assert mode(queue) == 0o700
    for path in files:
        assert mode(path) == 0o600, path


def test_tls_keys_are_0600_and_the_ca_certificate_is_public(tmp_path: Path) -> None:
    from ..conftest import write_config

    cfg = write_config(tmp_path)
    mailstack("init", "--config", str(cfg))
    tls = tmp_path / "data" / "tls"
    assert mode(tls / "ca-key.pem") == 0o600
    assert mode(tls / "key.pem") == 0o600
    assert mode(tls / "ca.pem") & 0o044, "the CA certificate is for clients to import"
