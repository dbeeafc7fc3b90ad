"""Mail clients' set-up pages, served by the http daemon on its plain and TLS ports.

Routes (GET and HEAD):
- ``/mail/config-v1.1.xml`` and ``/.well-known/autoconfig/mail/config-v1.1.xml``: the
  ``clientConfig`` document (``xml.py``), naming the host the client asked for (Host header) so
  that ``localhost`` and ``127.0.0.1`` both work — but only when it is one of the names the
  certificate is made for (``[server] hostname``, domains, localhost, loopback addresses);
  any other Host gets ``[server] hostname``, so a forged Host cannot send clients elsewhere;
- ``/ca.pem``: the local CA certificate to import (when mailstack generated it);
- ``/``: a short page with both links.
Other methods get 405.
"""

from __future__ import annotations

import re

from ..config import Config
from ..runtime.health import HEALTH_PATH  # answered 200 and logged at debug level only
from ..runtime.tls import LOOPBACK_IPS, TLSFiles, certificate_names
from .xml import client_config

XML_PATHS = ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml")
_HOST = re.compile(r"^\[?([A-Za-z0-9.:-]+?)\]?(?::\d+)?$")


PATHS = (*XML_PATHS, "/ca.pem", "/", HEALTH_PATH)


class AutoconfigSite:
    def __init__(self, cfg: Config, files: TLSFiles) -> None:
        self.cfg = cfg
        self.ca = files.ca.read_bytes() if files.ca else None
        self.names = frozenset([*certificate_names(cfg), *LOOPBACK_IPS])

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
