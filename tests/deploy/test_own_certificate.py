"""An operator's own ``[tls] cert``/``key`` is what every TLS listener presents (README: "your
certificate chain and key"), with its intermediate, and no local CA is generated then."""

from __future__ import annotations

import asyncio
import http.client
import imaplib
import poplib
import smtplib
import socket
import ssl
from pathlib import Path

import trustme
from cryptography import x509

from ..conftest import add_user, running

NAME = "mail.example.test"


def _serial(sock: ssl.SSLSocket) -> int:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _check_every_listener(cfg, ctx: ssl.SSLContext) -> dict[str, int]:
    """The serial each TLS listener (implicit and STARTTLS) presents, after a verified
    handshake for NAME against the operator's root only."""
    seen: dict[str, int] = {}
    for daemon, key in (("mta", "submissions"), ("imap", "imaps"), ("pop3", "pop3s"),
                        ("http", "https")):
        with socket.create_connection(("127.0.0.1", cfg.port(daemon, key)), 10) as raw, \
                ctx.wrap_socket(raw, server_hostname=NAME) as s:
            seen[key] = _serial(s)
    with smtplib.SMTP("127.0.0.1", cfg.port("mta", "submission"), timeout=10) as smtp:
        smtp.starttls(context=ctx)
        seen["submission"] = _serial(smtp.sock)
        smtp.login("alice@example.test", "alice-pw")
    with imaplib.IMAP4("127.0.0.1", cfg.port("imap", "imap"), timeout=10) as imap:
        imap.starttls(ssl_context=ctx)
        seen["imap"] = _serial(imap.sock)
        imap.login("alice@example.test", "alice-pw")
    pop = poplib.POP3("127.0.0.1", cfg.port("pop3", "pop3"), timeout=10)
    pop.stls(context=ctx)
    seen["pop3"] = _serial(pop.sock)
    pop.quit()
    return seen


async def test_daemons_serve_the_configured_chain(config_factory, tmp_path: Path) -> None:
    root = trustme.CA()
    intermediate = root.create_child_ca()
    leaf = intermediate.issue_cert(NAME, "127.0.0.1")  # the STARTTLS clients check the IP
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    chain.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))  # leaf, intermediate
    leaf.private_key_pem.write_to_path(str(key))
    cfg = config_factory(f'[tls]\ncert = "{chain}"\nkey = "{key}"\n', hostname=NAME)
    add_user(cfg, "alice@example.test", "alice-pw")
    ctx = ssl.create_default_context()
    root.configure_trust(ctx)  # the root only: the handshake needs the intermediate sent
    want = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number
    async with running("mda", cfg), running("mta", cfg), running("imap", cfg), \
            running("pop3", cfg), running("http", cfg):
        seen = await asyncio.to_thread(_check_every_listener, cfg, ctx)
        conn = http.client.HTTPConnection("127.0.0.1", cfg.port("http", "http"), timeout=10)
        conn.request("GET", "/ca.pem")
        ca_status = conn.getresponse().status
        conn.close()
    assert seen == dict.fromkeys(seen, want) and len(seen) == 7, seen
    assert ca_status == 404, "no local CA to offer when the operator brings a certificate"
    tls = cfg.data_dir / "tls"
    assert not (tls / "ca-key.pem").exists() and not (tls / "ca.pem").exists()
