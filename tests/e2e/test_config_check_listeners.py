"""`mailstack config check` prints the listeners `up` will open, moved by `--port-offset` (a
unix socket is not moved), the capture line and each `[[faults]]` table (README: "validates a
file and prints the listeners")."""

from __future__ import annotations

from pathlib import Path

from .helpers import mailstack

STANDARD = {("mta", "smtp"): (25, "STARTTLS"), ("mta", "submission"): (587, "STARTTLS required"),
            ("mta", "submissions"): (465, "implicit TLS"), ("imap", "imap"): (143, "STARTTLS"),
            ("imap", "imaps"): (993, "implicit TLS"), ("pop3", "pop3"): (110, "STLS"),
            ("pop3", "pop3s"): (995, "implicit TLS"), ("http", "http"): (80, "none"),
            ("http", "https"): (443, "implicit TLS"), ("mda", "lmtp"): (24, "none")}


def _rows(out: str) -> dict[tuple[str, str], str]:
    rows = {}
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0] in ("mta", "mda", "imap", "pop3", "http"):
            rows[(parts[0], parts[1])] = parts[2]
    return rows


def test_listeners_moved_by_the_offset_capture_and_faults(tmp_path: Path) -> None:
    data = tmp_path / "data"
    path = tmp_path / "m.toml"
    path.write_text(f'[server]\ndomains = ["example.test"]\ndata_dir = "{data}"\n'
                    '[capture]\nenabled = true\n'
                    '[[faults]]\nmatch = "bob@*"\nat = "rcpt"\nreply = "451 4.3.0 later"\n'
                    '[[faults]]\nmatch = "carol@*"\nat = "data"\nstall = "2s"\n')
    out = mailstack("config", "check", "--config", str(path), "--port-offset", "1000").stdout
    rows = _rows(out)
    want = {key: f"port {port + 1000:<6} {tls}" for key, (port, tls) in STANDARD.items()
            if key != ("mda", "lmtp")}
    want[("mda", "lmtp")] = f"unix:{data / 'run' / 'lmtp.sock'} none"  # not moved
    assert rows == want, out
    assert "  capture   every message goes to capture@capture.test; nothing is relayed" in out
    assert "  fault     bob@* at rcpt: 451 4.3.0 later" in out
    assert "  fault     carol@* at data: stall 2s" in out
    # the mda's TCP listener, when configured, is moved too
    path.write_text(f'[server]\ndomains = ["example.test"]\ndata_dir = "{data}"\n'
                    '[mda]\nsocket = ""\nlmtp = 24\n')
    out = mailstack("config", "check", "--config", str(path), "--port-offset", "1000").stdout
    assert _rows(out)[("mda", "lmtp")] == f"port {1024:<6} none", out
    assert "capture" not in out and "fault" not in out
