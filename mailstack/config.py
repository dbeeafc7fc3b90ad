"""Configuration: TOML file → frozen dataclasses, validated.

Sources, later ones win: the embedded defaults, the TOML file (``--config`` or
``$MAILSTACK_CONFIG``), ``$MAILSTACK_DATA`` (data_dir only), ``MAILSTACK_<SECTION>_<KEY>``
environment variables, and ``--port-offset``. An unknown key or a bad value raises
:class:`ConfigError` naming the file and the key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .smtp.reply import is_failure_reply

DEFAULT_DATA_DIR = "./mailstack-data"


class ConfigError(Exception):
    """A configuration problem; the message names the source and the key."""


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Size(int):
    """A byte count; accepts ints or strings such as ``"25MiB"``."""

    @classmethod
    def parse(cls, value: Any) -> Size:
        if isinstance(value, bool):
            raise ValueError("expected a size such as 25MiB")
        if isinstance(value, int):
            return cls(value)
        m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _SIZE_UNITS:
            raise ValueError(f"expected a size such as 25MiB or 1000000, got {value!r}")
        return cls(int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


class Duration(float):
    """Seconds; accepts numbers or strings such as ``"30s"``, ``"5m"``, ``"5d"``."""

    @classmethod
    def parse(cls, value: Any) -> Duration:
        if isinstance(value, bool):
            raise ValueError("expected a duration such as 30s, 5m, 2h or 5d")
        if isinstance(value, int | float):
            return cls(value)
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
        if not m:
            raise ValueError(f"expected a duration such as 30s, 5m, 2h or 5d, got {value!r}")
        return cls(float(m.group(1)) * _DURATION_UNITS[m.group(2)])


class Port(int):
    """A TCP port number 0..65535 (0 disables the listener)."""

    @classmethod
    def parse(cls, value: Any) -> Port:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
            raise ValueError(f"expected a port number 0..65535, got {value!r}")
        return cls(value)


#: the listeners that may sit behind a proxy speaking the PROXY protocol
PROXY_LISTENERS = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http")


@dataclass(frozen=True)
class ServerSection:
    hostname: str = "localhost"
    domains: tuple[str, ...] = ("localhost",)
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    bind: tuple[str, ...] = ("127.0.0.1", "::1")
    log_level: str = "info"
    #: failed logins from a client or against an account (counted across SMTP, IMAP and POP3)
    #: answered at once; each one after them is delayed, 0.5 s doubling up to auth_max_delay
    auth_failures_free: int = 3
    auth_max_delay: Duration = Duration(15)
    #: open connections a daemon accepts in all, and from one client address
    max_connections: int = 20000
    max_connections_per_ip: int = 1000
    #: implicit-TLS handshakes (465, 993, 995) and STARTTLS handshakes must end within this
    tls_handshake_timeout: Duration = Duration(10)
    #: the account that gets mail for postmaster@<each domain> and <postmaster> when there is
    #: no postmaster account of that name; empty: see users.postmaster_account
    postmaster: str = ""
    #: listener addresses (CIDR) on which IMAP and POP3 accept a password before TLS;
    #: everywhere else LOGINDISABLED / -ERR [AUTH] until STARTTLS/STLS or on the TLS port
    plaintext_login_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    #: trusted proxies (CIDR): a connection from one of them must begin with a PROXY protocol
    #: header (v1 or v2), whose client address then counts for limits, throttles and logs,
    #: and whose destination address for plaintext_login_networks; empty: no PROXY protocol
    proxy_networks: tuple[str, ...] = ()
    #: the listeners (e.g. "imaps", "submission") that take PROXY headers; empty: all of
    #: mta, imap, pop3 and autoconfig (never the mda's LMTP)
    proxy_listeners: tuple[str, ...] = ()
    #: "uvloop" (the default; plain asyncio where uvloop is not installed) or "asyncio"
    event_loop: str = "uvloop"


@dataclass(frozen=True)
class TLSSection:
    cert: str = ""
    key: str = ""


TLS_POLICIES = ("none", "opportunistic", "required")
EVENT_LOOPS = ("uvloop", "asyncio")


@dataclass(frozen=True)
class Transport:
    """Where mail for one domain (or ``*``: everything not local) is relayed."""

    host: str
    port: int = 25
    tls: str = "opportunistic"  # none | opportunistic | required
    verify: bool = False  # check the peer's certificate (required for smarthosts you trust)
    username: str = ""
    password: str = ""

    @property
    def name(self) -> str:
        return f"[{self.host}]:{self.port}"

    @classmethod
    def parse(cls, value: Any) -> Transport:
        """``"host:port"`` or ``{ host = "host:port", tls = "...", verify = true, username = "...",
        password = "..." }``."""
        if isinstance(value, str):
            value = {"host": value}
        if not isinstance(value, dict):
            raise ValueError("expected \"host:port\" or a table with host, tls, verify, "
                             "username, password")
        unknown = set(value) - {"host", "tls", "verify", "username", "password"}
        if unknown:
            raise ValueError(f"unknown transport key(s) {', '.join(sorted(unknown))}")
        m = re.fullmatch(r"\[?([^\s\]]+?)\]?:(\d+)", str(value.get("host", "")))
        if not m:
            raise ValueError(f"expected host:port (e.g. \"smtp.example.net:25\"), got "
                             f"{value.get('host')!r}")
        port = int(m.group(2))
        if not 0 < port < 65536:
            raise ValueError(f"bad port {port}")
        tls = str(value.get("tls", "opportunistic"))
        if tls not in TLS_POLICIES:
            raise ValueError(f"tls must be one of {', '.join(TLS_POLICIES)}")
        verify = value.get("verify", False)
        if not isinstance(verify, bool):
            raise ValueError("verify must be true or false")
        user, pw = str(value.get("username", "")), str(value.get("password", ""))
        if bool(user) != bool(pw):
            raise ValueError("username and password go together")
        return cls(m.group(1), port, tls, verify, user, pw)


@dataclass(frozen=True)
class MTASection:
    smtp: Port = Port(25)
    submission: Port = Port(587)
    submissions: Port = Port(465)
    max_message_size: Size = Size(25 * 1024**2)
    max_recipients: int = 100
    #: where the mda listens: "host:port" (TCP) or "unix:PATH" (PATH relative to data_dir or
    #: absolute); empty means the local mda: its [mda].socket, else 127.0.0.1 and [mda].lmtp
    lmtp: str = ""
    #: local-only mail is handed to the mda inside the SMTP transaction and ``250`` follows
    #: once its copies are durable; an mda that has not answered within this long (or that
    #: is down) gets the message through the queue instead. 0: always queue first
    direct_delivery: Duration = Duration(5)
    idle_timeout: Duration = Duration(300)
    retry_initial: Duration = Duration(60)
    retry_max: Duration = Duration(3600)
    queue_lifetime: Duration = Duration(5 * 86400)
    max_hops: int = 50
    #: errors (4xx/5xx replies) in one SMTP session before each further one is delayed by
    #: error_delay times the errors beyond the limit, and before the session is ended with 421
    soft_error_limit: int = 3
    hard_error_limit: int = 20
    error_delay: Duration = Duration(1)
    #: relay: DNS server for MX lookups ("" = the system's), e.g. "127.0.0.1:5353"
    resolver: str = ""
    relay_tls: str = "opportunistic"  # TLS policy for MX deliveries
    mx_port: Port = Port(25)  # port of MX hosts (not moved by --port-offset)
    connect_timeout: Duration = Duration(30)
    command_timeout: Duration = Duration(300)  # RFC 5321 4.5.3.2: 5 minutes per command
    data_timeout: Duration = Duration(600)  # RFC 5321 4.5.3.2.6: 10 minutes for the final dot
    max_per_destination: int = 4  # concurrent connections to one relay host
    transport: Mapping[str, Transport] = field(default_factory=dict)


@dataclass(frozen=True)
class MDASection:
    #: the LMTP unix socket (mode 0600; relative to data_dir or absolute; "" disables it)
    socket: str = "run/lmtp.sock"
    #: an LMTP TCP port on [mda].bind (0: none): no authentication, anyone who can connect
    #: can deliver to any mailbox; for the mta on another host or container only
    lmtp: Port = Port(0)
    bind: tuple[str, ...] = ("127.0.0.1",)
    quota: Size = Size(0)  # 0: no quota
    quota_messages: int = 0  # messages an account may hold (0: no limit)
    #: copies durable before ``250`` with one flush of a preallocated log (mda/copylog.py);
    #: false: each copy's file, ``new/`` and journal line are synced instead
    copy_log: bool = True
    #: each of the copy log's two files (written full of zeros when the log is made; a log
    #: keeps the size it was made with)
    copy_log_size: Size = Size(8 * 1024**2)


@dataclass(frozen=True)
class IMAPSection:
    imap: Port = Port(143)
    imaps: Port = Port(993)
    max_literal: Size = Size(50 * 1024**2)
    idle_timeout: Duration = Duration(1800)


@dataclass(frozen=True)
class POP3Section:
    pop3: Port = Port(110)
    pop3s: Port = Port(995)
    idle_timeout: Duration = Duration(600)
    #: RFC 2449 LOGIN-DELAY: least time between two logins of one account (0: no limit)
    login_delay: Duration = Duration(0)


@dataclass(frozen=True)
class HTTPSection:
    """The HTTP daemon (autoconfig, JMAP); ``[autoconfig]`` is another name for this section."""

    http: Port = Port(80)  # plain HTTP: autoconfig, CA download; logins on loopback only
    https: Port = Port(443)  # HTTPS: JMAP and the rest (0 disables)
    #: a client that sends nothing (or not the rest of its request) this long is disconnected
    idle_timeout: Duration = Duration(30)
    #: JMAP limits (announced in the session resource)
    max_size_request: Size = Size(10 * 1024**2)
    max_size_upload: Size = Size(50 * 1024**2)
    max_concurrent_requests: int = 8
    max_concurrent_upload: int = 4
    max_calls_in_request: int = 64
    max_objects_in_get: int = 1000
    max_objects_in_set: int = 1000
    #: hosts (exact names) PushSubscription callbacks may go to; empty: none
    push_allowlist: tuple[str, ...] = ()


AutoconfigSection = HTTPSection  # the section's name before the HTTP daemon served JMAP


@dataclass(frozen=True)
class CaptureSection:
    """Capture mode: accept mail for any address, relay none, keep all in one account."""

    enabled: bool = False
    address: str = "capture@capture.test"  # the catch-all account (created at start)
    password: str = "capture"  # its password, for IMAP/POP3 clients
    #: mail for domains the stack does not serve goes to the catch-all account (one
    #: X-Original-To header per such recipient) instead of being relayed; local mail is
    #: delivered as usual (test stacks set this unless told to relay)
    outbound: bool = False

    @property
    def active(self) -> bool:
        """The catch-all account is in use (capture mode or captured outbound mail)."""
        return self.enabled or self.outbound

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower()


@dataclass(frozen=True)
class ChaosSection:
    """Faults added and removed at run time (test stacks): see ``mailstack.runtime.chaos``."""

    #: the JSON file of current faults that the daemons re-read (relative to data_dir or
    #: absolute); empty: off, and no daemon looks for it
    file: str = ""
    seed: int = 0  # seeds each fault's probability draws: the same seed, the same faults


FAULT_POINTS = ("rcpt", "data", "fetch")


@dataclass(frozen=True)
class Fault:
    """A ``[[faults]]`` entry: misbehave on purpose for addresses matching ``match``."""

    match: str  # glob (fnmatch, case-insensitive) on the recipient (rcpt, data) or login (fetch)
    at: str  # rcpt | data (the mta's reply to that command) | fetch (imap drops the connection)
    reply: str = ""  # e.g. "451 4.3.0 try later"; empty: the normal reply (after any stall)
    stall: Duration = Duration(0)  # wait this long before replying

    def matches(self, address: str) -> bool:
        import fnmatch

        return fnmatch.fnmatchcase(address.lower(), self.match.lower())


def _parse_faults(value: Any, source: str) -> tuple[Fault, ...]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{source}: faults must be an array of tables ([[faults]])")
    hints = typing.get_type_hints(Fault)
    out = []
    for table in value:
        for key in table:
            if key not in hints:
                raise ConfigError(f"{source}: unknown key [[faults]].{key} "
                                  f"(known keys: {', '.join(sorted(hints))})")
        try:
            kw = {k: _convert(hints[k], v) for k, v in table.items()}
        except ValueError as exc:
            raise ConfigError(f"{source}: bad value in [[faults]]: {exc}") from None
        if not kw.get("match"):
            raise ConfigError(f"{source}: [[faults]].match is required (e.g. \"*@fail.test\")")
        if kw.get("at") not in FAULT_POINTS:
            raise ConfigError(f"{source}: bad value for [[faults]].at: use "
                              f"{', '.join(FAULT_POINTS)}")
        reply = kw.get("reply", "")
        if reply and not is_failure_reply(reply):
            raise ConfigError(f"{source}: bad value for [[faults]].reply: expected a 4xx or 5xx "
                              f"reply such as \"451 4.3.0 try later\", got {reply!r}")
        if kw["at"] == "fetch" and (reply or kw.get("stall")):
            raise ConfigError(f"{source}: [[faults]] at = \"fetch\" drops the connection; "
                              "reply and stall do not apply")
        if kw["at"] != "fetch" and not reply and not kw.get("stall"):
            raise ConfigError(f"{source}: [[faults]] for {kw['match']!r} needs reply or stall")
        out.append(Fault(**kw))
    return tuple(out)


@dataclass(frozen=True)
class Config:
    server: ServerSection = field(default_factory=ServerSection)
    tls: TLSSection = field(default_factory=TLSSection)
    mta: MTASection = field(default_factory=MTASection)
    mda: MDASection = field(default_factory=MDASection)
    imap: IMAPSection = field(default_factory=IMAPSection)
    pop3: POP3Section = field(default_factory=POP3Section)
    http: HTTPSection = field(default_factory=HTTPSection)
    capture: CaptureSection = field(default_factory=CaptureSection)
    chaos: ChaosSection = field(default_factory=ChaosSection)
    faults: tuple[Fault, ...] = ()
    port_offset: int = 0
    source: str = "<defaults>"

    # -- derived values -------------------------------------------------------------------
    @property
    def autoconfig(self) -> HTTPSection:
        """``[autoconfig]``: the old name of ``[http]``."""
        return self.http

    def port(self, section: str, name: str) -> int:
        """A listener's port with the offset applied (0 stays 0: disabled)."""
        base = int(getattr(getattr(self, SECTION_ALIASES.get(section, section)), name))
        return base + self.port_offset if base else 0

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def lmtp_socket(self) -> Path | None:
        """The mda's LMTP unix socket, or None when ``[mda] socket`` is empty."""
        return self.data_dir / self.mda.socket if self.mda.socket else None

    @property
    def lmtp_target(self) -> Path | tuple[str, int]:
        """Where the mta delivers local mail: a unix socket's path, or (host, port)."""
        if self.mta.lmtp.startswith("unix:"):
            return self.data_dir / self.mta.lmtp[len("unix:"):]
        if self.mta.lmtp:
            host, _, port = self.mta.lmtp.rpartition(":")
            return host.strip("[]"), int(port)
        if self.lmtp_socket is not None:
            return self.lmtp_socket
        return "127.0.0.1", self.port("mda", "lmtp")

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower() in self.server.domains

    def with_port_offset(self, offset: int) -> Config:
        return dataclasses.replace(self, port_offset=offset)

    def with_capture(self) -> Config:
        """Capture mode on (``--capture``); the catch-all's domain becomes a local domain."""
        return _capture_domains(dataclasses.replace(
            self, capture=dataclasses.replace(self.capture, enabled=True)))

    def faults_at(self, point: str, address: str) -> Fault | None:
        """The first ``[[faults]]`` entry for ``point`` that matches ``address``."""
        return next((f for f in self.faults if f.at == point and f.matches(address)), None)


def _capture_domains(cfg: Config) -> Config:
    if not cfg.capture.active or cfg.capture.domain in cfg.server.domains:
        return cfg
    server = dataclasses.replace(cfg.server, domains=(*cfg.server.domains, cfg.capture.domain))
    return dataclasses.replace(cfg, server=server)


_SECTION_TYPES: dict[str, type] = {
    "server": ServerSection, "tls": TLSSection, "mta": MTASection, "mda": MDASection,
    "imap": IMAPSection, "pop3": POP3Section, "http": HTTPSection,
    "capture": CaptureSection, "chaos": ChaosSection,
}
#: old section names still accepted (in files and MAILSTACK_* variables)
SECTION_ALIASES = {"autoconfig": "http"}


def _convert(typ: Any, value: Any, *, from_env: bool = False) -> Any:
    """Convert a TOML value to the field's type or raise ValueError (a plain string for a list
    is taken as a list of one only from the environment: ``MAILSTACK_SERVER_DOMAINS=x.test``)."""
    if typ in (Size, Duration, Port):
        return typ.parse(value)
    if typ is Path:
        if not isinstance(value, str) or not value:
            raise ValueError("expected a non-empty path string")
        return Path(value)
    if typ is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        return value
    origin = typing.get_origin(typ)
    if origin is tuple:
        if isinstance(value, str) and from_env:
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            example = f"[{value!r}]" if isinstance(value, str) else '["a", "b"]'
            raise ValueError(f"expected a list of strings such as {example}, got {value!r}")
        return tuple(value)
    if origin in (Mapping, dict):
        if not isinstance(value, dict):
            raise ValueError('expected a table such as { "example.net" = "host:25" }')
        out = {}
        for k, v in value.items():
            try:
                out[k.lower()] = Transport.parse(v)
            except ValueError as exc:
                raise ValueError(f"{k}: {exc}") from None
        return types.MappingProxyType(out)
    raise ValueError(f"unsupported type {typ!r}")


def _build_section(name: str, values: Mapping[str, Any], source: str,
                   env_keys: frozenset[str] = frozenset()) -> Any:
    cls = _SECTION_TYPES[name]
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown key [{name}].{key} "
                              f"(known keys: {', '.join(sorted(known))})")
        try:
            kwargs[key] = _convert(hints[key], value, from_env=key in env_keys)
        except ValueError as exc:
            where = f"MAILSTACK_{name.upper()}_{key.upper()}" if key in env_keys \
                else f"[{name}].{key}"
            raise ConfigError(f"{source}: bad value for {where}: {exc}") from None
    section = cls(**kwargs)
    _validate_section(name, section, source)
    return section


def _validate_section(name: str, section: Any, source: str) -> None:
    if name == "server":
        if not section.domains:
            raise ConfigError(f"{source}: [server].domains must name at least one domain")
        for d in section.domains:
            if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", d):
                raise ConfigError(f"{source}: bad value for [server].domains: {d!r} "
                                  "is not a domain name")
        if section.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"{source}: bad value for [server].log_level: "
                              "use debug, info, warning or error")
        if not section.bind:
            raise ConfigError(f"{source}: [server].bind must name at least one address")
        if section.postmaster:
            domain = section.postmaster.rpartition("@")[2].lower()
            if domain not in (d.lower() for d in section.domains):
                raise ConfigError(f"{source}: bad value for [server].postmaster: expected an "
                                  f"account in one of [server].domains, got "
                                  f"{section.postmaster!r}")
        for key in ("plaintext_login_networks", "proxy_networks"):
            for net in getattr(section, key):
                try:
                    ipaddress.ip_network(net, strict=False)
                except ValueError:
                    raise ConfigError(f"{source}: bad value for [server].{key}: {net!r} is not "
                                      "an address or network") from None
        for lst in section.proxy_listeners:
            if lst not in PROXY_LISTENERS:
                raise ConfigError(f"{source}: bad value for [server].proxy_listeners: {lst!r} "
                                  f"is not one of {', '.join(PROXY_LISTENERS)}")
        if section.event_loop not in EVENT_LOOPS:
            raise ConfigError(f"{source}: bad value for [server].event_loop: use "
                              f"{' or '.join(EVENT_LOOPS)}")
    if name == "server" and section.auth_failures_free < 0:
        raise ConfigError(f"{source}: bad value for [server].auth_failures_free: must be >= 0 "
                          "(the failed logins answered without a delay)")
    if name == "tls" and bool(section.cert) != bool(section.key):
        raise ConfigError(f"{source}: [tls].cert and [tls].key go together: set both or neither")
    if name == "mta":
        if section.lmtp and not (re.fullmatch(r"\[?[^\s\]]+\]?:\d+", section.lmtp)
                                 or re.fullmatch(r"unix:\S+", section.lmtp)):
            raise ConfigError(f"{source}: bad value for [mta].lmtp: expected host:port or "
                              f"unix:PATH, got {section.lmtp!r}")
        if section.max_recipients < 1:
            raise ConfigError(f"{source}: bad value for [mta].max_recipients: must be >= 1")
        if section.relay_tls not in TLS_POLICIES:
            raise ConfigError(f"{source}: bad value for [mta].relay_tls: use "
                              f"{', '.join(TLS_POLICIES)}")
        if section.resolver and not re.fullmatch(r"\[?[^\s\]]+\]?(:\d+)?", section.resolver):
            raise ConfigError(f"{source}: bad value for [mta].resolver: expected host[:port]")
        if section.soft_error_limit < 0 or section.hard_error_limit < 1:
            raise ConfigError(f"{source}: bad value for [mta].soft_error_limit/hard_error_limit:"
                              " soft must be >= 0 and hard >= 1")
        if section.max_per_destination < 1:
            raise ConfigError(f"{source}: bad value for [mta].max_per_destination: must be >= 1")
    if name == "capture":
        if not re.fullmatch(r"[A-Za-z0-9._+-]+@[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?",
                            section.address):
            raise ConfigError(f"{source}: bad value for [capture].address: expected an "
                              f"address like capture@capture.test, got {section.address!r}")
        if not section.password:
            raise ConfigError(f"{source}: [capture].password must not be empty")


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``MAILSTACK_<SECTION>_<KEY>=value`` → nested dict; values parsed as TOML if they can be."""
    out: dict[str, dict[str, Any]] = {}
    for var, raw in env.items():
        if not var.startswith("MAILSTACK_"):
            continue
        rest = var[len("MAILSTACK_"):].lower()
        section, _, key = rest.partition("_")
        section = SECTION_ALIASES.get(section, section)
        if section not in _SECTION_TYPES or not key:
            continue
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out.setdefault(section, {})[key] = value
    return out


def load(path: str | os.PathLike[str] | None = None, *, port_offset: int = 0,
         env: Mapping[str, str] | None = None) -> Config:
    """Load the configuration; ``path=None`` uses ``$MAILSTACK_CONFIG`` or the defaults."""
    env = os.environ if env is None else env
    if path is None and env.get("MAILSTACK_CONFIG"):
        path = env["MAILSTACK_CONFIG"]
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{source}: no such config file") from None
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the config file ({exc.strerror or exc});"
                              " check its path and permissions") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    faults = _parse_faults(data.pop("faults"), source) if "faults" in data else ()
    for old, new in SECTION_ALIASES.items():
        if isinstance(data.get(old), dict):
            table = data.pop(old)
            try:  # errors name the section as the file spells it
                _build_section(new, table, source)
            except ConfigError as exc:
                raise ConfigError(str(exc).replace(f"[{new}]", f"[{old}]")) from None
            both = set(table) & set(data.get(new, {}))
            if both:
                raise ConfigError(f"{source}: [{old}] is another name for [{new}]: set "
                                  f"{', '.join(sorted(both))} in one of them only")
            data[new] = {**table, **data.get(new, {})}
    for section, values in data.items():
        if section not in _SECTION_TYPES or not isinstance(values, dict):
            raise ConfigError(f"{source}: unknown section [{section}] "
                              f"(known: {', '.join(_SECTION_TYPES)}, [[faults]])")
    merged = {name: dict(data.get(name, {})) for name in _SECTION_TYPES}
    if path is None and env.get("MAILSTACK_DATA"):
        merged["server"]["data_dir"] = env["MAILSTACK_DATA"]
    overrides = _env_overrides(env)
    for section, values in overrides.items():
        merged[section].update(values)
    sections = {}
    for name, values in merged.items():
        env_keys = frozenset(overrides.get(name, {}))
        label = source if not env_keys else f"{source} (with MAILSTACK_* environment)"
        sections[name] = _build_section(name, values, label, env_keys)
    server: ServerSection = sections["server"]
    sections["server"] = dataclasses.replace(
        server, domains=tuple(d.lower() for d in server.domains),
        data_dir=server.data_dir.expanduser().absolute())
    if port_offset < 0 or port_offset > 65000:
        raise ConfigError(f"--port-offset {port_offset}: must be between 0 and 65000")
    mda: MDASection = sections["mda"]
    if not sections["mta"].lmtp and not mda.socket and not mda.lmtp:
        raise ConfigError(f"{source}: the mta has nowhere to deliver local mail: set [mda].socket "
                          "(the default), [mda].lmtp or [mta].lmtp")
    if not 256 * 1024 <= mda.copy_log_size <= 1024**3 or mda.copy_log_size % 4096:
        raise ConfigError(f"{source}: [mda] copy_log_size = {int(mda.copy_log_size)}: use a "
                          "whole number of 4 KiB between 256KiB and 1GiB (e.g. \"8MiB\")")
    return _capture_domains(Config(**sections, faults=faults, port_offset=port_offset,
                                   source=source))


def dump_effective(cfg: Config) -> str:
    """A human-readable summary used by ``mailstack config check``."""
    lines = [f"config: {cfg.source}", f"data_dir: {cfg.data_dir}",
             f"domains: {', '.join(cfg.server.domains)}", f"hostname: {cfg.server.hostname}"]
    return "\n".join(lines)


def check_files(cfg: Config) -> list[str]:
    """What ``up`` would trip over in the files the configuration names: the data directory
    (writable), the ``[tls]`` certificate and key, or the generated ones when they exist (each
    parses as PEM, and the key matches the certificate). One message per problem, naming the
    file and the key and saying how to fix it; empty when all is well."""
    problems: list[str] = []
    src = cfg.source
    d = cfg.data_dir
    probe = d
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        problems.append(f"{src}: [server].data_dir {d}: {probe} is not a directory; choose "
                        "another data_dir")
    elif not os.access(probe, os.W_OK | os.X_OK) or _read_only(probe):
        what = "is" if probe == d else f"cannot be created: {probe}"
        problems.append(f"{src}: [server].data_dir {d} {what} not writable by uid "
                        f"{os.getuid()}; run mailstack as the directory's owner, change its "
                        "owner or mode (chown/chmod), or set another data_dir")
    if cfg.tls.cert:
        fix = "fix [tls].cert/key, or leave both empty to generate a certificate"
        problems += _check_pem_pair(Path(cfg.tls.cert), Path(cfg.tls.key),
                                    f"{src}: [tls].cert", f"{src}: [tls].key", fix)
    else:
        tls = d / "tls"
        cert, key = tls / "cert.pem", tls / "key.pem"
        if cert.exists() and key.exists() and (tls / "ca.pem").exists():
            fix = (f"remove {tls} to have a new certificate generated (then import the new "
                   "ca.pem in your mail clients)")
            with _tls_lock(tls):  # not while a daemon starting beside us writes them
                problems += _check_pem_pair(cert, key, "generated certificate",
                                            "generated key", fix)
    return problems


@contextlib.contextmanager
def _tls_lock(tls: Path) -> Iterator[None]:
    """A shared hold on the lock ``tls.ensure_tls_files`` writes the generated files under."""
    try:
        fd = os.open(tls / ".lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _check_pem_pair(cert: Path, key: Path, cert_name: str, key_name: str,
                    fix: str) -> list[str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    blobs: dict[str, bytes] = {}
    problems = []
    for name, path in ((cert_name, cert), (key_name, key)):
        try:
            blobs[name] = path.read_bytes()
        except OSError as exc:
            problems.append(f"{name} {path}: cannot be read ({exc.strerror or exc}); {fix}")
    if problems:
        return problems
    try:
        certs = x509.load_pem_x509_certificates(blobs[cert_name])
    except ValueError:
        return [f"{cert_name} {cert}: not a PEM certificate (expected -----BEGIN "
                f"CERTIFICATE-----); {fix}"]
    try:
        private = serialization.load_pem_private_key(blobs[key_name], password=None)
    except TypeError:
        return [f"{key_name} {key}: the key is encrypted; store it without a passphrase "
                f"(openssl pkey -in KEY -out KEY.plain) or {fix}"]
    except Exception:  # ValueError, UnsupportedAlgorithm
        return [f"{key_name} {key}: not a PEM private key (expected -----BEGIN PRIVATE KEY-----"
                f" or similar); {fix}"]
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certs[0].public_key().public_bytes(*der) != private.public_key().public_bytes(*der):
        return [f"{key_name} {key} does not belong to {cert_name} {cert} (the first "
                f"certificate in the file must be the server's); {fix}"]
    return []
