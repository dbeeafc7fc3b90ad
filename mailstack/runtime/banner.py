"""The table of listeners (one source for `config check`, the `up` banner and the daemons)."""

from __future__ import annotations

from dataclasses import dataclass
from os.path import abspath

from ..config import Config


@dataclass(frozen=True)
class Listener:
    daemon: str
    name: str  # contract name: smtp, submission, submissions, lmtp, imap, imaps, pop3, pop3s
    port: int
    tls: str  # "STARTTLS", "STARTTLS required", "implicit TLS", "none"
    addresses: tuple[str, ...]
    path: str = ""  # a unix socket instead of a port

    @property
    def where(self) -> str:
        """``unix:PATH`` or ``127.0.0.1, [::1] port 25``."""
        if self.path:
            return f"unix:{self.path}"
        addrs = ", ".join(f"[{a}]" if ":" in a else a for a in self.addresses)
        return f"{addrs} port {self.port}"


def listeners(cfg: Config) -> list[Listener]:
    """Every enabled listener with its effective port (offset applied)."""
    b = cfg.server.bind
    rows = [
        Listener("mta", "smtp", cfg.port("mta", "smtp"), "STARTTLS", b),
        Listener("mta", "submission", cfg.port("mta", "submission"), "STARTTLS required", b),
        Listener("mta", "submissions", cfg.port("mta", "submissions"), "implicit TLS", b),
        Listener("mda", "lmtp", 0, "none", (), str(cfg.lmtp_socket or "")),
        Listener("mda", "lmtp", cfg.port("mda", "lmtp"), "none", cfg.mda.bind),
        Listener("imap", "imap", cfg.port("imap", "imap"), "STARTTLS", b),
        Listener("imap", "imaps", cfg.port("imap", "imaps"), "implicit TLS", b),
        Listener("pop3", "pop3", cfg.port("pop3", "pop3"), "STLS", b),
        Listener("pop3", "pop3s", cfg.port("pop3", "pop3s"), "implicit TLS", b),
        Listener("http", "http", cfg.port("http", "http"), "none", b),
        Listener("http", "https", cfg.port("http", "https"), "implicit TLS", b),
    ]
    return [r for r in rows if r.port or r.path]


def banner(cfg: Config, daemons: list[str], ca_path: str | None) -> str:
    """What `mailstack up` prints once every child is started."""
    lines = ["", "mailstack is up", ""]
    for lst in listeners(cfg):
        if lst.daemon not in daemons:
            continue
        lines.append(f"  {lst.daemon:<10} {lst.name:<12} {lst.where:<28} {lst.tls}")
    lines += ["",
              f"  domains:   {', '.join(cfg.server.domains)}",
              f"  data:      {cfg.data_dir}"]
    http, https = cfg.port("http", "http"), cfg.port("http", "https")
    if "http" in daemons and http:
        host = cfg.server.bind[0] if cfg.server.bind[0] not in ("0.0.0.0", "::") else "localhost"
        host = f"[{host}]" if ":" in host else host
        lines.append(f"  autoconfig: http://{host}:{http}/mail/config-v1.1.xml  "
                     f"(CA download: http://{host}:{http}/ca.pem)")
    if "http" in daemons and https:
        host = cfg.server.bind[0] if cfg.server.bind[0] not in ("0.0.0.0", "::") else "localhost"
        host = f"[{host}]" if ":" in host else host
        lines.append(f"  jmap:      https://{host}:{https}/.well-known/jmap")
    if ca_path:
        lines.append(f"  CA cert:   {ca_path}   (import it into Thunderbird: Settings > "
                     "Privacy & Security > Certificates > Authorities > Import)")
    from ..accounts.capture import capture_banner

    lines += capture_banner(cfg)
    # absolute, so that the command works from any directory (the default data dir is relative
    # to the directory `up` was started in)
    if cfg.source != "<defaults>":
        add = f"mailstack user add alice@{cfg.server.domains[0]} --config {abspath(cfg.source)}"
    else:
        add = f"MAILSTACK_DATA={cfg.data_dir} mailstack user add alice@{cfg.server.domains[0]}"
    lines += [f"  add user:  {add}",
              "  stop:      Ctrl-C", ""]
    return "\n".join(lines)
