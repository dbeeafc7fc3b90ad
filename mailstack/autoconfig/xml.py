"""Mozilla's autoconfig document (``clientConfig`` version 1.1) for this stack.

Thunderbird's account wizard fetches ``http://autoconfig.<domain>/mail/config-v1.1.xml`` or
``http://<domain>/.well-known/autoconfig/mail/config-v1.1.xml`` and, given this file, sets up
IMAP, POP3 and SMTP without probing (its probing refuses self-signed certificates).
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from ..config import Config


def _server(kind: str, tag: str, host: str, port: int, socket_type: str) -> str:
    return (f'    <{tag} type="{kind}">\n'
            f"      <hostname>{escape(host)}</hostname>\n"
            f"      <port>{port}</port>\n"
            f"      <socketType>{socket_type}</socketType>\n"
            "      <authentication>password-cleartext</authentication>\n"
            "      <username>%EMAILADDRESS%</username>\n"
            f"    </{tag}>\n")


def client_config(cfg: Config, host: str | None = None) -> str:
    """The XML; ``host`` is the name clients should connect to (default: [server].hostname)."""
    host = host or cfg.server.hostname
    domain = cfg.server.domains[0]
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n',
             '<clientConfig version="1.1">\n',
             f'  <emailProvider id="{escape(domain)}">\n']
    parts += [f"    <domain>{escape(d)}</domain>\n" for d in cfg.server.domains]
    parts += [f"    <displayName>mailstack ({escape(domain)})</displayName>\n",
              f"    <displayShortName>{escape(domain)}</displayShortName>\n"]
    for section, name, kind, sock in (("imap", "imaps", "imap", "SSL"),
                                      ("imap", "imap", "imap", "STARTTLS"),
                                      ("pop3", "pop3s", "pop3", "SSL"),
                                      ("pop3", "pop3", "pop3", "STARTTLS")):
        port = cfg.port(section, name)
        if port:
            parts.append(_server(kind, "incomingServer", host, port, sock))
    for name, sock in (("submissions", "SSL"), ("submission", "STARTTLS")):
        port = cfg.port("mta", name)
        if port:
            parts.append(_server("smtp", "outgoingServer", host, port, sock))
    parts += ["  </emailProvider>\n", "</clientConfig>\n"]
    return "".join(parts)
