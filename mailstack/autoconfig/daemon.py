"""The autoconfig daemon: a small HTTP/1.1 server (h11) for mail clients' set-up.

Routes (GET and HEAD):
- ``/mail/config-v1.1.xml`` and ``/.well-known/autoconfig/mail/config-v1.1.xml``: the
  ``clientConfig`` document (``xml.py``), naming the host the client asked for (Host header) so
  that ``localhost`` and ``127.0.0.1`` both work — but only when it is one of the names the
  certificate is made for (``[server] hostname``, domains, localhost, loopback addresses);
  any other Host gets ``[server] hostname``, so a forged Host cannot send clients elsewhere;
- ``/ca.pem``: the local CA certificate to import (when mailstack generated it);
- ``/``: a short page with both links.
Anything else is 404; other methods 405. Requests are limited to 8 KiB of headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

import h11

from ..config import Config
from ..runtime.health import HEALTH_PATH  # answered 200 and logged at debug level only
from ..runtime.netserver import format_sockname, limiter_for, peer_ip, proxy_policy, start_server
from ..runtime.tls import LOOPBACK_IPS, certificate_names, ensure_tls_files
from .xml import client_config

log = logging.getLogger("mailstack.autoconfig")

XML_PATHS = ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml")
_HOST = re.compile(r"^\[?([A-Za-z0-9.:-]+?)\]?(?::\d+)?$")


class AutoconfigServer:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        files = ensure_tls_files(cfg)
        self.ca = files.ca.read_bytes() if files.ca else None
        self.open: set[asyncio.StreamWriter] = set()
        self.names = frozenset([*certificate_names(cfg), *LOOPBACK_IPS])
        self.idle_timeout = float(cfg.autoconfig.idle_timeout)

    def server_name(self, host: str) -> str:
        """The Host header's name when it is one we serve, else ``[server] hostname``."""
        m = _HOST.match(host or "")
        name = m.group(1).lower() if m else ""
        return name if name in self.names else self.cfg.server.hostname

    def respond(self, method: str, target: str, host: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a request."""
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET and HEAD\n"
        if path == HEALTH_PATH:
            return 200, "text/plain", b"ok\n"
        if path in XML_PATHS:
            return 200, "application/xml", client_config(self.cfg, self.server_name(host)).encode()
        if path == "/ca.pem" and self.ca:
            return 200, "application/x-pem-file", self.ca
        if path == "/":
            body = ("<!doctype html><title>mailstack</title><h1>mailstack</h1><ul>"
                    f'<li><a href="{XML_PATHS[0]}">autoconfig (Thunderbird)</a>'
                    + ('<li><a href="/ca.pem">CA certificate to import</a>' if self.ca else "")
                    + "</ul>\n")
            return 200, "text/html; charset=utf-8", body.encode()
        return 404, "text/plain", b"not found\n"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=8192)
        client = peer_ip(writer)
        self.open.add(writer)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await asyncio.wait_for(reader.read(8192), self.idle_timeout)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    host = dict(event.headers).get(b"host", b"").decode("latin-1")
                    method, target = event.method.decode(), event.target.decode("latin-1")
                    status, ctype, body = self.respond(method, target, host)
                    # health probes (`mailstack health`, every few seconds) only at debug
                    level = logging.DEBUG if target == HEALTH_PATH else logging.INFO
                    log.log(level, "%s %s %s %d %d", client, method, target[:200], status,
                            len(body))
                    headers = [("content-type", ctype), ("content-length", str(len(body))),
                               ("cache-control", "no-cache")]
                    writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
                    if method != "HEAD":
                        writer.write(conn.send(h11.Data(data=body)))
                    writer.write(conn.send(h11.EndOfMessage()))
                    await writer.drain()
                elif isinstance(event, h11.EndOfMessage):
                    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                        conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    break
        except h11.RemoteProtocolError as exc:
            log.info("%s bad HTTP request: %s", client, exc)
            with contextlib.suppress(Exception):
                writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n"
                             b"connection: close\r\n\r\n")
        except (TimeoutError, ConnectionError, h11.LocalProtocolError):
            pass
        finally:
            self.open.discard(writer)
            writer.close()


async def serve(cfg: Config, stop: asyncio.Event) -> None:
    server = AutoconfigServer(cfg)
    port = cfg.port("autoconfig", "http")
    if not port:
        await stop.wait()
        return
    servers = await start_server(
        server.handle, cfg.server.bind, port, name="autoconfig http", limiter=limiter_for(cfg),
        busy_reply=b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n"
                   b"connection: close\r\n\r\n", proxy=proxy_policy(cfg, "http"))
    for srv in servers:
        for sock in srv.sockets:
            log.info("listening on %s (http, autoconfig)", format_sockname(sock.getsockname()))
    await stop.wait()
    for srv in servers:
        srv.close()
    for writer in list(server.open):  # idle keep-alive clients: their handlers see EOF
        writer.close()
    await asyncio.sleep(0)
