"""Relay to other MTAs: transports, MX lookup, TLS policy, retries and bounces (RFC 3464)."""

from __future__ import annotations

import asyncio
import email
import ssl
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trustme

from mailstack.config import Config
from mailstack.mta.queue import Spool

from ..conftest import free_port, running
from ..e2e.helpers import cli_env
from ..mta.conftest import Stack, make_stack
from .dnsserver import Zone, start_dns
from .sink import Script, Sink

FAST = ('retry_initial = "1s"', 'retry_max = "1s"', 'connect_timeout = "2s"',
        'command_timeout = "2s"', 'data_timeout = "2s"')


@asynccontextmanager
async def relay_stack(config_factory: Callable[..., Config], mta_extra: str = "",
                      transport: str = "",
                      mta_env: dict[str, str] | None = None) -> AsyncIterator[Stack]:
    extra = "[mta]\n" + "\n".join(FAST) + "\n" + mta_extra + "\n"
    if transport:
        extra += "[mta.transport]\n" + transport + "\n"
    cfg = config_factory(extra)
    st = make_stack(cfg)
    async with running("mda", cfg) as mda, running("mta", cfg, env=mta_env) as mta:
        st.daemons.update(mda=mda, mta=mta)
        yield st


async def send(st: Stack, rcpts: list[str], subject: str = "relay test",
               body: str = "hello over there") -> None:
    await asyncio.to_thread(st.submit, "alice@example.test", rcpts,
                            f"From: alice@example.test\r\nSubject: {subject}\r\n\r\n{body}\r\n")


async def deferred_with(st: Stack, code: str, timeout: float = 15.0):
    """Wait until the queued entry's first recipient was deferred with ``code``."""
    spool = Spool(st.cfg.data_dir / "queue")
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        entries = spool.load_all()
        if entries and code in entries[0].recipients[0].last_reply:
            assert entries[0].recipients[0].status == "pending", entries[0]
            return entries[0]
        assert asyncio.get_running_loop().time() < deadline, entries
        await asyncio.sleep(0.05)


async def queue_drained(st: Stack, timeout: float = 30.0) -> None:
    """Wait until the mta's queue is empty (every entry finished: nothing more will be sent)."""
    spool = Spool(st.cfg.data_dir / "queue")
    deadline = asyncio.get_running_loop().time() + timeout
    while spool.ids():
        assert asyncio.get_running_loop().time() < deadline, spool.load_all()
        await asyncio.sleep(0.02)


def bounce_of(raw: bytes) -> tuple[email.message.Message, list[email.message.Message]]:
    msg = email.message_from_bytes(raw)
    assert msg.get_content_type() == "multipart/report", raw[:400]
    status = msg.get_payload()[1].get_payload()
    return msg, status[1:]


def sink_tls(name: str = "sink.example.net") -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert(name).configure_cert(ctx)
    return ctx


async def test_transport_route_delivers_with_trace(config_factory) -> None:
    sink = await Sink(tls=sink_tls()).start()
    async with relay_stack(config_factory,
                           transport=f'"example.net" = "127.0.0.1:{sink.port}"') as st:
        await send(st, ["bob@example.net"])
        [got] = await sink.wait(1)
    assert got.sender == "alice@example.test" and got.rcpts == ["bob@example.net"]
    assert got.data.count(b"Received: ") == 1 and b"by mail.example.test" in got.data
    assert got.tls, "opportunistic STARTTLS was used"
    await sink.stop()


async def test_mx_lookup_in_preference_order_with_fallback(config_factory) -> None:
    sink = await Sink().start()
    zone = Zone()
    zone.add("example.net", "MX", "10 mx1.example.net.", "20 mx2.example.net.")
    zone.add("mx1.example.net", "A", "127.0.0.2")  # nothing listens there: refused
    zone.add("mx2.example.net", "A", "127.0.0.1")
    dns_t, dns_port = await start_dns(zone)
    extra = f'resolver = "127.0.0.1:{dns_port}"\nmx_port = {sink.port}'
    async with relay_stack(config_factory, extra) as st:
        await send(st, ["bob@example.net"])
        [got] = await sink.wait(1)
        assert got.rcpts == ["bob@example.net"]
    dns_t.close()
    await sink.stop()


async def test_implicit_mx_null_mx_and_nxdomain(config_factory) -> None:
    sink = await Sink().start()
    zone = Zone()
    zone.add("implicit.test", "A", "127.0.0.1")  # no MX: the A record is the implicit MX
    zone.add("nomail.test", "MX", "0 .")  # RFC 7505 null MX
    dns_t, dns_port = await start_dns(zone)
    extra = f'resolver = "127.0.0.1:{dns_port}"\nmx_port = {sink.port}'
    async with relay_stack(config_factory, extra) as st:
        await send(st, ["bob@implicit.test"])
        await sink.wait(1)
        await send(st, ["x@nomail.test", "y@nowhere.test"], subject="doomed")
        bounces = await st.wait_messages("alice@example.test", 1)
    assert [m.rcpts for m in sink.messages] == [["bob@implicit.test"]]
    assert len(bounces) == 1
    msg, rcpts = bounce_of(bounces[0])
    assert msg["To"] == "<alice@example.test>" and "MAILER-DAEMON" in msg["From"]
    by_rcpt = {r["Final-Recipient"]: r["Status"] for r in rcpts}
    assert by_rcpt == {"rfc822; x@nomail.test": "5.1.10", "rfc822; y@nowhere.test": "5.1.2"}
    assert b"Subject: doomed" in bounces[0]
    dns_t.close()
    await sink.stop()


async def test_servfail_defers(config_factory) -> None:
    zone = Zone()
    zone.servfail.add("flaky.test")
    dns_t, dns_port = await start_dns(zone)
    async with relay_stack(config_factory, f'resolver = "127.0.0.1:{dns_port}"') as st:
        await send(st, ["bob@flaky.test"])
        await deferred_with(st, "4.4.3")
        assert st.messages("alice@example.test") == [], "no bounce for a temporary failure"
    dns_t.close()


async def test_destination_down_then_up_is_retried(config_factory) -> None:
    sink = Sink()
    sink.port = free_port()
    async with relay_stack(config_factory,
                           transport=f'"example.net" = "127.0.0.1:{sink.port}"') as st:
        await send(st, ["bob@example.net"])
        await deferred_with(st, "4.4.1")
        assert sink.messages == []
        await sink.start()
        [got] = await sink.wait(1)
        assert got.rcpts == ["bob@example.net"]
        await queue_drained(st)  # removed from the queue: no later attempt can come
        assert len(sink.messages) == 1, "delivered once"
    await sink.stop()


async def test_4xx_then_success_and_5xx_for_one_of_two(config_factory) -> None:
    sink = await Sink(Script(rcpt_replies={"gone": "550 5.1.1 no such user"},
                             temp_failures_left=1)).start()
    async with relay_stack(config_factory,
                           transport=f'"example.net" = "127.0.0.1:{sink.port}"') as st:
        await send(st, ["bob@example.net", "gone@example.net"], subject="mixed")
        [got] = await sink.wait(1)
        bounces = await st.wait_messages("alice@example.test", 1)
        await queue_drained(st)  # removed from the queue: no later attempt can come
    assert got.rcpts == ["bob@example.net"] and len(sink.messages) == 1
    assert len(bounces) == 1
    _, rcpts = bounce_of(bounces[0])
    assert [(r["Final-Recipient"], r["Status"]) for r in rcpts] == [
        ("rfc822; gone@example.net", "5.1.1")]
    assert "sink" in rcpts[0]["Remote-MTA"] or "127.0.0.1" in rcpts[0]["Remote-MTA"]
    await sink.stop()


async def test_connection_dropped_mid_data_is_retried_once(config_factory) -> None:
    sink = await Sink(Script(drop_in_data=1)).start()
    async with relay_stack(config_factory,
                           transport=f'"example.net" = "127.0.0.1:{sink.port}"') as st:
        await send(st, ["bob@example.net"])
        await sink.wait(1)
        await queue_drained(st)  # removed from the queue: no later attempt can come
    assert len(sink.messages) == 1
    await sink.stop()


async def test_stalled_peer_times_out_and_defers(config_factory) -> None:
    sink = await Sink(Script(stall=5)).start()
    async with relay_stack(config_factory,
                           transport=f'"example.net" = "127.0.0.1:{sink.port}"') as st:
        await send(st, ["bob@example.net"])
        entry = await deferred_with(st, "4.4.2")
        assert entry.recipients[0].last_reply.startswith("451 4.4.2")
    await sink.stop()


async def test_tls_required_but_not_offered_defers(config_factory) -> None:
    sink = await Sink().start()  # no TLS context: no STARTTLS in EHLO
    transport = f'"example.net" = {{ host = "127.0.0.1:{sink.port}", tls = "required" }}'
    async with relay_stack(config_factory, transport=transport) as st:
        await send(st, ["bob@example.net"])
        await deferred_with(st, "4.7.4")
    assert sink.messages == []
    await sink.stop()


async def test_tls_required_and_verified_smarthost(config_factory) -> None:
    sink = await Sink(tls=sink_tls("smarthost.test")).start()
    zone = Zone()
    zone.add("smarthost.test", "A", "127.0.0.1")
    dns_t, dns_port = await start_dns(zone)
    # verification fails: our system store does not know trustme's CA → deferred
    transport = (f'"*" = {{ host = "smarthost.test:{sink.port}", tls = "required", '
                 "verify = true }")
    async with relay_stack(config_factory, f'resolver = "127.0.0.1:{dns_port}"',
                           transport=transport) as st:
        await send(st, ["bob@example.org"])
        await deferred_with(st, "4.7.5")
    assert sink.messages == []
    dns_t.close()
    await sink.stop()


async def test_message_larger_than_peer_size_bounces(config_factory) -> None:
    sink = await Sink(Script(size=500)).start()
    async with relay_stack(config_factory,
                           transport=f'"example.net" = "127.0.0.1:{sink.port}"') as st:
        await send(st, ["bob@example.net"], body="x" * 70 + ("\r\n" + "x" * 70) * 30)
        bounces = await st.wait_messages("alice@example.test", 1)
    _, rcpts = bounce_of(bounces[0])
    assert rcpts[0]["Status"] == "5.3.4"
    assert sink.messages == []
    await sink.stop()


async def test_expiry_bounces(config_factory) -> None:
    port = free_port()
    async with relay_stack(config_factory, 'queue_lifetime = "2s"',
                           transport=f'"example.net" = "127.0.0.1:{port}"') as st:
        await send(st, ["bob@example.net"], subject="never arrives")
        bounces = await st.wait_messages("alice@example.test", 1, timeout=10)
    msg, rcpts = bounce_of(bounces[0])
    assert rcpts[0]["Action"] == "failed" and rcpts[0]["Status"].endswith(".4.7")
    assert "expired" in msg.get_payload()[0].get_payload()


async def test_bounce_is_never_sent_to_null_sender(config_factory) -> None:
    """A message from <> that fails permanently is dropped with a log line: no bounce is
    queued (it would go to nobody, or loop)."""
    sink = await Sink(Script(rcpt_replies={"gone": "550 5.1.1 no"})).start()
    async with relay_stack(config_factory,
                           transport=f'"example.net" = "127.0.0.1:{sink.port}"') as st:
        mta = st.daemons["mta"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mailstack", "sendmail", "-f", "<>", "gone@example.net",
            "--config", st.cfg.source, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=cli_env())
        out, _ = await proc.communicate(b"Subject: from null\n\nx\n")
        assert proc.returncode == 0, out.decode()
        # the entry is tried, fails permanently and is removed; a bounce would have been
        # queued (and logged) before that
        await mta.wait_log_match(r"(?m): removed$")
        log = mta.log()
        assert "to=<gone@example.net>" in log and "status=bounced" in log, log
        assert "non-delivery notification" not in log, log
        assert "not bouncing to the null sender: 1 recipient(s) failed" in log
        spool = Spool(st.cfg.data_dir / "queue")
        assert spool.ids() == [] and spool.load_all() == []
        assert mta.log().count(": removed") == 1, mta.log()
    assert sink.messages == []
    await sink.stop()
