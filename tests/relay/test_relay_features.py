"""Relay features each with a test of their own: TLS policies (none, the plaintext retry after
a failed handshake, verify = true succeeding), smarthost AUTH, 8BITMIME/SMTPUTF8 towards the
peer, connection reuse, max_per_destination, and retry backoff doubling up to retry_max."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import time
from pathlib import Path

import pytest
import trustme

from mailstack.mta.queue import Spool

from ..mta.conftest import Stack
from .dnsserver import Zone, start_dns
from .sink import Script, Sink
from .test_relay import bounce_of, deferred_with, relay_stack, send, sink_tls

TO = '"example.net" = "127.0.0.1:{port}"'


async def test_relay_tls_none_never_uses_starttls(config_factory) -> None:
    sink = await Sink(tls=sink_tls("mx.example.net")).start()  # STARTTLS offered
    zone = Zone()
    zone.add("example.net", "MX", "10 mx.example.net.")
    zone.add("mx.example.net", "A", "127.0.0.1")
    dns_t, dns_port = await start_dns(zone)
    extra = f'resolver = "127.0.0.1:{dns_port}"\nmx_port = {sink.port}\nrelay_tls = "none"'
    async with relay_stack(config_factory, extra) as st:
        await send(st, ["bob@example.net"])
        [got] = await sink.wait(1)
    assert got.rcpts == ["bob@example.net"]
    assert not got.tls, "relay_tls = none used STARTTLS"
    dns_t.close()
    await sink.stop()


def broken_tls() -> ssl.SSLContext:
    """A server context whose handshake fails with every client: TLS 1.2 with PSK ciphers only
    and no PSK (NO_SHARED_CIPHER)."""
    ctx = sink_tls()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("PSK")
    return ctx


async def test_opportunistic_retries_in_plaintext_after_a_failed_handshake(
        config_factory) -> None:
    sink = await Sink(tls=broken_tls()).start()
    async with relay_stack(config_factory, transport=TO.format(port=sink.port)) as st:
        await send(st, ["bob@example.net"])
        [got] = await sink.wait(1)
        await st.daemons["mta"].wait_log("STARTTLS failed")
        await st.daemons["mta"].wait_log("retrying without TLS")
    assert got.rcpts == ["bob@example.net"] and not got.tls
    assert sink.handler.connections == 2  # the failed handshake, then plaintext
    await sink.stop()


async def test_required_tls_with_a_failed_handshake_defers(config_factory) -> None:
    sink = await Sink(tls=broken_tls()).start()
    transport = f'"example.net" = {{ host = "127.0.0.1:{sink.port}", tls = "required" }}'
    async with relay_stack(config_factory, transport=transport) as st:
        await send(st, ["bob@example.net"])
        await deferred_with(st, "4.7.5")
    assert sink.messages == []
    await sink.stop()


async def test_verify_true_succeeds_with_a_trusted_certificate(config_factory,
                                                               tmp_path: Path) -> None:
    """The mta trusts the sink's CA through SSL_CERT_FILE (OpenSSL's default verify paths, as
    an operator's system store would): the certificate for smarthost.test verifies."""
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("smarthost.test").configure_cert(ctx)
    ca_file = tmp_path / "trusted-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    sink = await Sink(tls=ctx).start()
    zone = Zone()
    zone.add("smarthost.test", "A", "127.0.0.1")
    dns_t, dns_port = await start_dns(zone)
    transport = (f'"*" = {{ host = "smarthost.test:{sink.port}", tls = "required", '
                 "verify = true }")
    async with relay_stack(config_factory, f'resolver = "127.0.0.1:{dns_port}"',
                           transport=transport, mta_env={"SSL_CERT_FILE": str(ca_file)}) as st:
        await send(st, ["bob@example.org"])
        [got] = await sink.wait(1)
    assert got.tls and got.rcpts == ["bob@example.org"]
    dns_t.close()
    await sink.stop()


SMARTHOST_USER, SMARTHOST_PW = "me@provider.test", "s3cret-pw"


def smarthost(port: int, password: str = SMARTHOST_PW, tls: str = "required") -> str:
    return (f'"*" = {{ host = "127.0.0.1:{port}", tls = "{tls}", '
            f'username = "{SMARTHOST_USER}", password = "{password}" }}')


async def test_smarthost_auth_after_starttls(config_factory) -> None:
    sink = await Sink(Script(auth=(SMARTHOST_USER, SMARTHOST_PW)), tls=sink_tls()).start()
    async with relay_stack(config_factory, transport=smarthost(sink.port)) as st:
        await send(st, ["carol@example.org"])
        [got] = await sink.wait(1)
        assert SMARTHOST_PW not in st.daemons["mta"].log()
    assert got.tls and got.rcpts == ["carol@example.org"]
    assert sink.handler.logins == [(SMARTHOST_USER, SMARTHOST_PW, True)]
    await sink.stop()


async def test_smarthost_refusing_our_credentials_defers(config_factory) -> None:
    sink = await Sink(Script(auth=(SMARTHOST_USER, SMARTHOST_PW)), tls=sink_tls()).start()
    async with relay_stack(config_factory, transport=smarthost(sink.port, "wrong")) as st:
        await send(st, ["carol@example.org"])
        await deferred_with(st, "4.7.8")
    assert sink.messages == [] and sink.handler.logins[0][:2] == (SMARTHOST_USER, "wrong")
    await sink.stop()


async def test_smarthost_credentials_never_sent_without_tls(config_factory) -> None:
    sink = await Sink(Script(auth=(SMARTHOST_USER, SMARTHOST_PW))).start()  # no STARTTLS
    async with relay_stack(config_factory,
                           transport=smarthost(sink.port, tls="opportunistic")) as st:
        await send(st, ["carol@example.org"])
        await deferred_with(st, "4.7.4")
    assert sink.handler.logins == [] and sink.messages == []
    await sink.stop()


def submit_raw(st: Stack, data: bytes, options: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", st.submission, timeout=10) as s:
        s.starttls(context=st.ssl)
        s.login("alice@example.test", "alice-pw")
        s.sendmail("alice@example.test", ["bob@example.net"], data, mail_options=options)


EIGHT_BIT = "From: alice@example.test\r\nSubject: Grüße\r\n\r\nÄpfel und Öl\r\n".encode()


async def test_8bitmime_and_smtputf8_are_passed_on_when_offered(config_factory) -> None:
    sink = await Sink(Script(smtputf8=True)).start()
    async with relay_stack(config_factory, transport=TO.format(port=sink.port)) as st:
        await asyncio.to_thread(submit_raw, st, EIGHT_BIT, ["BODY=8BITMIME", "SMTPUTF8"])
        await sink.wait(1)
        await asyncio.to_thread(submit_raw, st, b"Subject: plain\r\n\r\nascii\r\n", [])
        await sink.wait(2)
    eight, plain = sink.messages
    assert "BODY=8BITMIME" in eight.mail_options and "SMTPUTF8" in eight.mail_options
    assert "Äpfel".encode() in eight.data
    assert not {"BODY=8BITMIME", "SMTPUTF8"} & set(plain.mail_options), plain.mail_options
    await sink.stop()


async def test_smtputf8_message_to_a_peer_without_it_bounces(config_factory) -> None:
    sink = await Sink(Script(smtputf8=False)).start()
    async with relay_stack(config_factory, transport=TO.format(port=sink.port)) as st:
        await asyncio.to_thread(submit_raw, st, EIGHT_BIT, ["BODY=8BITMIME", "SMTPUTF8"])
        bounces = await st.wait_messages("alice@example.test", 1)
    _, rcpts = bounce_of(bounces[0])
    assert rcpts[0]["Status"] == "5.6.7"
    assert sink.messages == []
    await sink.stop()


async def test_a_connection_is_reused_for_the_next_message(config_factory) -> None:
    sink = await Sink().start()
    async with relay_stack(config_factory, transport=TO.format(port=sink.port)) as st:
        for n in range(1, 4):
            await send(st, ["bob@example.net"], subject=f"reuse {n}")
            assert len(await sink.wait(n)) == n
    assert sink.handler.connections == 1
    await sink.stop()


@pytest.mark.parametrize("limit", [1, 3])
async def test_max_per_destination(config_factory, limit: int) -> None:
    """Four messages queued at once to one host with a slow MAIL reply: at most ``limit``
    connections are open to it at any time (and with 3 allowed, more than one is used)."""
    sink = await Sink(Script(stall=0.3)).start()
    async with relay_stack(config_factory, f"max_per_destination = {limit}",
                           transport=TO.format(port=sink.port)) as st:
        def four() -> None:
            with smtplib.SMTP("127.0.0.1", st.submission, timeout=10) as s:
                s.starttls(context=st.ssl)
                s.login("alice@example.test", "alice-pw")
                for n in range(4):
                    s.sendmail("alice@example.test", ["bob@example.net"],
                               f"Subject: parallel {n}\r\n\r\nx\r\n")
        await asyncio.to_thread(four)
        assert len(await sink.wait(4)) == 4
    if limit == 1:
        assert sink.handler.max_active == 1 and sink.handler.connections == 1
    else:
        assert 2 <= sink.handler.max_active <= limit, sink.handler.max_active
    await sink.stop()


async def test_retry_interval_doubles_up_to_retry_max(config_factory) -> None:
    """retry_initial 0.5 s, retry_max 2 s: the waits after attempts 1-4 are 0.5, 1, 2, 2 s.

    Deterministic bounds only: each attempt is recorded on disk (next_attempt = now + backoff)
    before the mta dials, so next_attempt minus the time the sink saw that attempt's MAIL is at
    most the backoff; and no attempt starts before the previous next_attempt, so successive
    next_attempt values are at least the backoff apart."""
    sink = await Sink(Script(data_reply="451 4.3.0 not today")).start()
    extra = 'retry_initial = "0.5s"\nretry_max = "2s"'
    async with relay_stack(config_factory, extra, transport=TO.format(port=sink.port)) as st:
        await send(st, ["bob@example.net"])
        spool = Spool(st.cfg.data_dir / "queue")
        recorded: dict[int, float] = {}  # attempts → next_attempt
        deadline = time.monotonic() + 30
        while len(sink.handler.mail_times) < 4 or 4 not in recorded:
            for entry in spool.load_all():
                recorded.setdefault(entry.attempts, entry.next_attempt)
            assert time.monotonic() < deadline, (recorded, sink.handler.mail_times)
            await asyncio.sleep(0.005)
    backoff = {1: 0.5, 2: 1.0, 3: 2.0, 4: 2.0}
    mails = sink.handler.mail_times
    for k in (1, 2, 3, 4):
        assert recorded[k] - mails[k - 1] <= backoff[k] + 0.001, (k, recorded, mails)
    for k in (2, 3, 4):
        assert recorded[k] - recorded[k - 1] >= backoff[k] - 0.001, (k, recorded)
    await sink.stop()
