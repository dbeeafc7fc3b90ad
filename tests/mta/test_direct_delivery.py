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


def _send_code(port: int, rcpts: list[str], body: bytes) -> tuple[int, str]:
    """One transaction; the reply after DATA, whatever it is."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.example.org")
        assert s.mail("someone@example.org")[0] == 250
        for r in rcpts:
            assert s.rcpt(r)[0] == 250
        code, text = s.data(body)
    return code, text.decode()


async def test_a_retry_after_a_late_mda_and_a_full_queue_makes_no_second_copy(
        config_factory) -> None:
    """The mda delivers but answers after the mta gave up; the queue write then fails (disk
    full): the client gets 452 and sends the message again. The retry reuses the first queue
    id (XRETRY), so the mda's journal finds the copy it made: one copy, not two."""
    cfg = config_factory('[mta]\ndirect_delivery = "1s"\n[chaos]\nfile = "run/chaos.json"\n')
    st = make_stack(cfg)
    fault_file = cfg.data_dir / "run" / "chaos.json"
    fault = chaos.normalize({"at": "lmtp.reply", "match": "bob@*", "latency": 2, "times": 1})
    chaos.write(fault_file, [{**fault, "id": 1}], 0)
    full = cfg.data_dir.parent / "disk-full"
    full.touch()
    body = b"Subject: once\r\nMessage-ID: <once@example.org>\r\n\r\nexactly one copy\r\n"
    async with running("mda", cfg) as mda, \
            running("mta", cfg, env={"MAILSTACK_TEST_DISK_FULL": str(full)}) as mta:
        code, text = await asyncio.to_thread(_send_code, st.smtp, ["bob@example.test"], body)
        assert (code, text[:5]) == (452, "4.3.1"), text
        assert chaos.hits(fault_file) == {1: 1}  # the mda committed, then stalled its reply
        first = (await mta.wait_log("may be delivered in part")).split(
            "may be delivered in part")[0].split()[-1]
        await mda.wait_log(f"{first}: to=<bob@example.test>")
        assert len(_inbox(st, "bob@example.test")) == 1  # the copy the mta did not hear of
        full.unlink()
        code, text = await asyncio.to_thread(_send_code, st.smtp, ["bob@example.test"], body)
        assert code == 250 and _qid(text) == first, text  # the retry took the first queue id
        await mda.wait_log(f"{first}: to=<bob@example.test>, size=")
        assert "status=already delivered" in await mda.wait_log("status=already delivered")
        deadline = asyncio.get_running_loop().time() + 20
        while _queued(cfg) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert _queued(cfg) == []
        [path] = _inbox(st, "bob@example.test")
        assert b"exactly one copy" in path.read_bytes()
        # a different message afterwards is a new one
        code, text = await asyncio.to_thread(_send_code, st.smtp, ["bob@example.test"],
                                             body + b"more\r\n")
        assert code == 250 and _qid(text) != first
        assert len(await st.wait_messages("bob@example.test", 2)) == 2


async def test_a_partly_failed_direct_attempt_queues_only_the_rest_with_its_reply(
        config_factory) -> None:
    """Alice's copy is made in the SMTP transaction, bob's is refused (over quota). The queue
    entry starts with that outcome: alice delivered, bob pending with the mda's reply — so
    the queue runner sends bob's copy only (alice's is never offered again, not even to be
    answered 'already delivered'), and ``queue list`` had the reason from the start."""
    cfg = config_factory('[mda]\nquota_messages = 1\n')
    st = make_stack(cfg)
    async with running("mda", cfg) as mda, running("mta", cfg) as mta:
        await asyncio.to_thread(_send, st.smtp, ["bob@example.test"], "fills bob's quota")
        code, text = await asyncio.to_thread(
            _send_code, st.smtp, ["alice@example.test", "bob@example.test"],
            b"Subject: two\r\n\r\nfor alice and bob\r\n")
        assert code == 250, text
        qid = _qid(text)
        log = await mta.wait_log(f"{qid}: removed")
        assert f"{qid}: to=<bob@example.test>" in log and "status=bounced" in log, log
        assert f"{qid}: direct delivery failed: queued" in log
        mda_log = await mda.wait_log(f"{qid}: to=<bob@example.test>, status=bounced", count=2)
        assert mda_log.count(f"{qid}: to=<alice@example.test>") == 1, mda_log
        assert "already delivered" not in mda_log
    [path] = _inbox(st, "alice@example.test")
    assert b"for alice and bob" in path.read_bytes()
    assert len(_inbox(st, "bob@example.test")) == 1


def test_the_first_state_of_a_queue_entry_holds_the_direct_attempt(tmp_path: Path) -> None:
    """What ``queue list`` reads before the runner's first attempt ends: the spool's first
    state carries the recipients' outcome of the attempt made before the entry was written."""
    from mailstack.mta.queue import DELIVERED, PENDING, Envelope, Recipient

    spool = Spool(tmp_path / "queue")
    env = Envelope(sender="s@example.org", recipients=["a@example.test", "b@example.test"],
                   size=3)
    tried = [Recipient("a@example.test", DELIVERED, 1, "250 2.0.0 ok", "mda[x]"),
             Recipient("b@example.test", PENDING, 1, "451 4.4.1 mda timed out", "mda[x]")]
    qid = spool.put(b"x\r\n", env, first_attempt_at=0.0, recipients=tried).id
    [entry] = Spool(tmp_path / "queue").load_all()
    assert entry.id == qid and entry.attempts == 1
    assert [(r.status, r.last_reply) for r in entry.recipients] == [
        (DELIVERED, "250 2.0.0 ok"), (PENDING, "451 4.4.1 mda timed out")]
    assert [r.address for r in entry.pending] == ["b@example.test"]
    assert entry.last_error == "451 4.4.1 mda timed out"
