"""Submission and MX reception through the real mta and mda with real clients."""

from __future__ import annotations

import asyncio
import email
import shutil
import smtplib
import subprocess

import aiosmtplib
import pytest

from .conftest import Stack


async def test_submission_starttls_auth_delivers_with_trace_headers(stack: Stack) -> None:
    body = "From: alice@example.test\r\nTo: bob@example.test\r\nSubject: hello\r\n\r\nHi Bob!\r\n"
    refused = await asyncio.to_thread(stack.submit, "alice@example.test",
                                      ["bob@example.test"], body)
    assert refused == {}
    [raw] = await stack.wait_messages("bob@example.test", 1)
    msg = email.message_from_bytes(raw)
    assert msg["Return-Path"] == "<alice@example.test>"
    assert msg["Delivered-To"] == "bob@example.test"
    assert "ESMTPSA" in msg["Received"] and "mail.example.test" in msg["Received"]
    assert msg["Message-ID"] and msg["Date"], "submission adds Message-ID and Date"
    assert msg.get_payload().strip() == "Hi Bob!"
    assert b"\r\n" not in raw, "Maildir files hold LF line ends"


async def test_implicit_tls_465_with_aiosmtplib(stack: Stack) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=stack.submissions, use_tls=True,
                               tls_context=stack.ssl) as client:
        await client.login("alice@example.test", "alice-pw")
        errors, reply = await client.sendmail("alice@example.test", ["bob@example.test"],
                                              b"Subject: via 465\r\n\r\nbody\r\n")
    assert errors == {} and reply.startswith("2.0.0 Ok: queued as")
    [raw] = await stack.wait_messages("bob@example.test", 1)
    assert b"Subject: via 465" in raw


async def test_port_25_accepts_local_mail_without_auth(stack: Stack) -> None:
    def send() -> None:
        with smtplib.SMTP("127.0.0.1", stack.smtp) as s:
            s.sendmail("someone@example.org", ["alice@example.test"],
                       b"Subject: from afar\r\nMessage-ID: <x@example.org>\r\n\r\nhi\r\n")
    await asyncio.to_thread(send)
    [raw] = await stack.wait_messages("alice@example.test", 1)
    msg = email.message_from_bytes(raw)
    assert msg["Return-Path"] == "<someone@example.org>"
    assert " with ESMTP id " in msg["Received"]
    assert msg["Date"] is None, "mail from other MTAs is not rewritten"


async def test_null_sender_and_subaddress(stack: Stack) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=stack.smtp,
                               tls_context=stack.ssl) as c:
        await c.sendmail("", ["alice+lists@example.test"], b"Subject: dsn\r\n\r\nx\r\n")
    [raw] = await stack.wait_messages("alice@example.test", 1)
    assert raw.startswith(b"Return-Path: <>\nDelivered-To: alice+lists@example.test\n")


async def test_several_recipients_and_dot_lines(stack: Stack) -> None:
    body = "Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nend\r\n"
    await asyncio.to_thread(stack.submit, "alice@example.test",
                            ["bob@example.test", "alice@example.test"], body)
    for who in ("bob@example.test", "alice@example.test"):
        [raw] = await stack.wait_messages(who, 1)
        assert raw.endswith(b"\n.leading dot\n..two\n.\nend\n")


async def test_auth_login_uses_standard_prompts(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.submissions,
                                                   ssl=stack.ssl, server_hostname="localhost")
    async def cmd(line: bytes) -> bytes:
        writer.write(line + b"\r\n")
        out = b""
        while True:
            chunk = await reader.readline()
            out += chunk
            if chunk[3:4] == b" ":
                return out
    await reader.readline()
    await cmd(b"EHLO client.example")
    assert await cmd(b"AUTH LOGIN") == b"334 VXNlcm5hbWU6\r\n"
    assert await cmd(b"YWxpY2VAZXhhbXBsZS50ZXN0") == b"334 UGFzc3dvcmQ6\r\n"
    assert (await cmd(b"YWxpY2UtcHc=")).startswith(b"235 2.7.0")
    writer.close()


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed")
async def test_swaks_submission(stack: Stack) -> None:
    proc = await asyncio.create_subprocess_exec(
        "swaks", "--server", "127.0.0.1", "--port", str(stack.submission), "--tls",
        "--tls-ca-path", str(stack.ca), "--tls-verify",
        "--auth", "PLAIN", "--auth-user", "alice@example.test", "--auth-password", "alice-pw",
        "--from", "alice@example.test", "--to", "bob@example.test",
        "--header", "Subject: via swaks", "--body", "swaks body",
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    [raw] = await stack.wait_messages("bob@example.test", 1)
    assert b"Subject: via swaks" in raw


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_curl_submission(stack: Stack, tmp_path) -> None:
    mail = tmp_path / "mail.txt"
    mail.write_bytes(b"Subject: via curl\r\n\r\ncurl body\r\n")
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--ssl-reqd", "--cacert", str(stack.ca),
        f"smtp://localhost:{stack.submission}", "--mail-from", "alice@example.test",
        "--mail-rcpt", "bob@example.test", "--user", "alice@example.test:alice-pw",
        "--upload-file", str(mail), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    [raw] = await stack.wait_messages("bob@example.test", 1)
    assert b"curl body" in raw
