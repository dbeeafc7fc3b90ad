"""Local mail is delivered inside the SMTP transaction: ``250`` once the Maildir copy is
durable, the queue only as the fallback when the mda is down or slow — and exactly one copy
either way. Real daemons (mta and mda processes), smtplib over real sockets."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

from mailstack.config import Config
from mailstack.mta.queue import Spool
from mailstack.runtime import chaos

from ..conftest import running
from .conftest import Stack, make_stack


def _send(port: int, rcpts: list[str], subject: str) -> str:
    """One transaction on port 25; returns the text of the reply after DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.example.org")
        assert s.mail("someone@example.org")[0] == 250
        for r in rcpts:
            assert s.rcpt(r)[0] == 250
        code, text = s.data(f"Subject: {subject}\r\n\r\nbody of {subject}\r\n".encode())
    assert code == 250, text
    return text.decode()


def _qid(reply: str) -> str:
    return reply.rsplit(" ", 1)[1]


def _inbox(st: Stack, address: str) -> list[Path]:
    box = st.inbox(address)
    return [*(box / "new").iterdir(), *(box / "cur").iterdir()]


def _queued(cfg: Config) -> list[str]:
    return [e.id for e in Spool(cfg.data_dir / "queue").load_all()]


async def test_local_mail_is_in_the_maildir_when_250_arrives(stack: Stack) -> None:
    reply = await asyncio.to_thread(_send, stack.smtp, ["bob@example.test",
                                                        "alice@example.test"], "direct")
    qid = _qid(reply)
    # no waiting: the copies were durable before the reply was sent
    for who in ("bob@example.test", "alice@example.test"):
        [path] = _inbox(stack, who)
        assert b"Subject: direct" in path.read_bytes()
        assert f"id {qid}" in " ".join(path.read_text().split())  # in our Received header
    log = await stack.daemons["mta"].wait_log(f"{qid}: client=")
    assert "nrcpt=2 (delivered)" in log and "(queued)" not in log
    assert _queued(stack.cfg) == []


async def test_mda_down_means_queued_then_delivered_once(config_factory) -> None:
    cfg = config_factory()
    st = make_stack(cfg)
    async with running("mta", cfg) as mta:
        st.daemons["mta"] = mta
        qid = _qid(await asyncio.to_thread(_send, st.smtp, ["bob@example.test"], "later"))
        await mta.wait_log(f"{qid}: client=")
        assert f"{qid}: direct delivery failed: queued" in mta.log()
        assert _queued(cfg) == [qid]
        assert _inbox(st, "bob@example.test") == []
        async with running("mda", cfg):
            await mta.wait_log(f"{qid}: removed")
            [path] = _inbox(st, "bob@example.test")
            assert b"Subject: later" in path.read_bytes()
            assert _queued(cfg) == []
            # the runner delivered again: the next message goes directly once more
            qid2 = _qid(await asyncio.to_thread(_send, st.smtp, ["bob@example.test"], "now"))
            await mta.wait_log(f"{qid2}: client=")
            assert f"{qid2}: client=" in mta.log() and "nrcpt=1 (delivered)" in mta.log()
            assert len(_inbox(st, "bob@example.test")) == 2


async def test_a_slow_mda_gets_the_message_through_the_queue_exactly_once(
        config_factory) -> None:
    cfg = config_factory('[mta]\ndirect_delivery = "1s"\n[chaos]\nfile = "run/chaos.json"\n')
    st = make_stack(cfg)
    fault_file = cfg.data_dir / "run" / "chaos.json"
    fault = chaos.normalize({"at": "lmtp.data", "match": "bob@*", "latency": 3, "times": 1})
    chaos.write(fault_file, [{**fault, "id": 1}], 0)
    async with running("mda", cfg), running("mta", cfg) as mta:
        loop = asyncio.get_running_loop()
        started = loop.time()
        qid = _qid(await asyncio.to_thread(_send, st.smtp, ["bob@example.test"], "slow"))
        assert chaos.hits(fault_file) == {1: 1}  # the direct attempt met the stalled mda
        log = await mta.wait_log(f"{qid}: removed")
        assert f"{qid}: to=<bob@example.test>" in log and "(451 4.4.1 mda timed out)" in log
        assert f"{qid}: direct delivery failed: queued" in log
        # until the stalled first attempt would have gone on, and a little beyond it
        while loop.time() < started + 4:
            assert len(_inbox(st, "bob@example.test")) == 1
            await asyncio.sleep(0.1)
        [path] = _inbox(st, "bob@example.test")
        assert b"Subject: slow" in path.read_bytes()
        assert _queued(cfg) == []
