"""PushSubscription: verification, StateChange callbacks, and only allowlisted hosts."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
from pathlib import Path
from typing import Any

import http_ece
import trustme
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mailstack.runtime.tls import client_context, ensure_tls_files
from tests.conftest import add_user, running

from .conftest import ALICE, JMAP, PASSWORD, message


class Receiver:
    """A small HTTPS endpoint that records what is POSTed to it (JSON bodies decoded; an
    encrypted one is kept as bytes, with its headers in :attr:`headers`). It answers each
    POST with :attr:`reply` (``201 Created`` unless a test sets another, e.g. a redirect)."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.reply = b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n"
        self.got: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.headers: list[dict[str, str]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await r.readline()
                if not line:
                    return
                path = line.split()[1].decode()
                headers = {}
                while (h := await r.readline()) not in (b"\r\n", b""):
                    name, _, value = h.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await r.readexactly(int(headers.get("content-length", 0)))
                self.headers.append(headers)
                await self.got.put((path, body if "content-encoding" in headers
                                    else json.loads(body)))
                w.write(self.reply)
                await w.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            w.close()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port


async def start_receiver(tmp_path: Path) -> tuple[Receiver, Path]:
    """A receiver on localhost with a certificate from a new CA; the CA file the http daemon
    must trust (``SSL_CERT_FILE``)."""
    ca = trustme.CA()
    ca_file = tmp_path / "push-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    receiver = Receiver(server_ctx)
    await receiver.start()
    return receiver, ca_file


async def test_push_subscription_verified_then_notified(config_factory, tmp_path: Path) -> None:
    receiver, ca_file = await start_receiver(tmp_path)
    port = receiver.port
    cfg = config_factory('[http]\npush_allowlist = ["localhost"]\n')
    add_user(cfg, ALICE, PASSWORD)
    files = ensure_tls_files(cfg)
    async with running("http", cfg, env={"SSL_CERT_FILE": str(ca_file)}) as daemon:
        jmap = JMAP(cfg, daemon, client_context(files.ca))
        resp = await jmap.call([["PushSubscription/set", {"create": {
            "ok": {"deviceClientId": "phone-1", "url": f"https://localhost:{port}/cb",
                   "types": ["Email"]},
            "evil": {"deviceClientId": "x", "url": "https://169.254.169.254/latest/meta-data"},
            "plain": {"deviceClientId": "x", "url": f"http://localhost:{port}/cb"},
            "userinfo": {"deviceClientId": "x", "url": f"https://a@localhost:{port}/cb"}}},
            "0"]])
        result = resp[0][1]
        assert set(result["created"]) == {"ok"}
        assert {k: v["type"] for k, v in result["notCreated"].items()} == {
            "evil": "invalidProperties", "plain": "invalidProperties",
            "userinfo": "invalidProperties"}
        sid = result["created"]["ok"]["id"]
        path, verification = await asyncio.wait_for(receiver.got.get(), 15)
        assert path == "/cb" and verification["@type"] == "PushVerification"
        assert verification["pushSubscriptionId"] == sid
        # not verified yet: no StateChange; a wrong code is refused
        resp = await jmap.call([["PushSubscription/set", {"update": {
            sid: {"verificationCode": "wrong"}}}, "0"]])
        assert resp[0][1]["notUpdated"][sid]["type"] == "invalidProperties"
        resp = await jmap.call([["PushSubscription/set", {"update": {
            sid: {"verificationCode": verification["verificationCode"]}}}, "0"],
            ["PushSubscription/get", {"ids": None}, "1"]])
        assert resp[0][1]["updated"] == {sid: None}
        (sub,) = resp[1][1]["list"]
        assert "url" not in sub and sub["deviceClientId"] == "phone-1"
        await daemon.wait_log("push: watching example.test/alice")
        jmap.deliver(message("pushed to a phone"))
        _, change = await asyncio.wait_for(receiver.got.get(), 20)
        assert change["@type"] == "StateChange"
        assert list(change["changed"][jmap.account()]) == ["Email"]
        assert receiver.got.empty()  # nothing was ever sent to the refused URLs
    assert receiver.server is not None
    receiver.server.close()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_push_with_keys_is_encrypted_to_them(config_factory, tmp_path: Path) -> None:
    """A subscription made with ``keys`` gets its PushVerification and StateChanges as RFC 8291
    Web Push messages: aes128gcm bodies only the holder of the private key opens (the same
    way a browser's push service hands them to the device). Keys that are not a P-256 point
    and a 16-octet secret are refused; the keys are never returned."""
    receiver, ca_file = await start_receiver(tmp_path)
    port = receiver.port
    device = ec.generate_private_key(ec.SECP256R1())
    point = device.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    auth = os.urandom(16)
    keys = {"p256dh": b64url(point), "auth": b64url(auth)}

    def opened(body: bytes) -> dict:
        return json.loads(http_ece.decrypt(body, private_key=device, auth_secret=auth,
                                           version="aes128gcm"))

    cfg = config_factory('[http]\npush_allowlist = ["localhost"]\n')
    add_user(cfg, ALICE, PASSWORD)
    files = ensure_tls_files(cfg)
    url = f"https://localhost:{port}/cb"
    async with running("http", cfg, env={"SSL_CERT_FILE": str(ca_file)}) as daemon:
        jmap = JMAP(cfg, daemon, client_context(files.ca))
        resp = await jmap.call([["PushSubscription/set", {"create": {
            "ok": {"deviceClientId": "phone-2", "url": url, "keys": keys},
            "short": {"deviceClientId": "x", "url": url,
                      "keys": {"p256dh": b64url(point[:33]), "auth": keys["auth"]}},
            "offcurve": {"deviceClientId": "x", "url": url,
                         "keys": {"p256dh": b64url(b"\x04" + bytes(64)), "auth": keys["auth"]}},
            "noauth": {"deviceClientId": "x", "url": url, "keys": {"p256dh": keys["p256dh"]}},
            "notb64": {"deviceClientId": "x", "url": url,
                       "keys": {"p256dh": "***", "auth": keys["auth"]}}}}, "0"]])
        result = resp[0][1]
        assert set(result["created"]) == {"ok"}
        assert {v["type"] for v in result["notCreated"].values()} == {"invalidProperties"}
        assert len(result["notCreated"]) == 4
        sid = result["created"]["ok"]["id"]
        path, sealed = await asyncio.wait_for(receiver.got.get(), 15)
        assert path == "/cb"
        assert isinstance(sealed, bytes) and b"PushVerification" not in sealed
        assert receiver.headers[-1]["content-encoding"] == "aes128gcm"
        verification = opened(sealed)
        assert verification["@type"] == "PushVerification"
        assert verification["pushSubscriptionId"] == sid
        resp = await jmap.call([["PushSubscription/set", {"update": {
            sid: {"verificationCode": verification["verificationCode"]}}}, "0"],
            ["PushSubscription/get", {"ids": None, "properties": None}, "1"]])
        assert resp[0][1]["updated"] == {sid: None}
        (sub,) = resp[1][1]["list"]
        assert "keys" not in sub and "url" not in sub
        await daemon.wait_log("push: watching example.test/alice")
        jmap.deliver(message("pushed, sealed"))
        _, sealed = await asyncio.wait_for(receiver.got.get(), 20)
        change = opened(sealed)
        assert change["@type"] == "StateChange" and jmap.account() in change["changed"]
    assert receiver.server is not None
    receiver.server.close()
