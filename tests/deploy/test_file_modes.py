"""Files and directories the daemons and the CLI create are private to the account running
them: the processes set umask 077 at start. Checked on real processes started as users do
(``python -m mailstack ...``), with the test process's own umask left permissive."""

from __future__ import annotations

import os
import smtplib
import stat
from pathlib import Path

from ..conftest import write_config
from ..e2e.helpers import mailstack, proc, wait_files, wait_port

#: public by design: the CA certificate and the server's certificate chain
PUBLIC = {"ca.pem", "cert.pem"}


def test_created_files_are_0600_and_directories_0700(tmp_path: Path) -> None:
    old = os.umask(0o022)  # what a typical login shell has
    try:
        config = write_config(tmp_path)
        conf = str(config)
        mailstack("user", "add", "alice@example.test", "--password-stdin", "--config", conf,
                  input="pw\n")
        from mailstack.config import load

        cfg = load(config, env={})
        with proc("serve", "mda", "--config", conf) as mda, \
                proc("serve", "mta", "--config", conf) as mta:
            mda.wait_for_output("listening on")
            wait_port(cfg.port("mta", "smtp"))
            with smtplib.SMTP("127.0.0.1", cfg.port("mta", "smtp"), timeout=10) as s:
                s.sendmail("x@example.org", ["alice@example.test"], b"Subject: m\r\n\r\nx\r\n")
            assert len(wait_files(cfg.data_dir, "alice@example.test", 1)) == 1
            assert mta.popen.poll() is None
    finally:
        os.umask(old)
    data = cfg.data_dir
    for must in ("queue", "mail/example.test/alice/new", "tls/ca-key.pem", "tls/key.pem",
                 "users", "state/auth-failures.db", "mda/delivered"):
        assert (data / must).exists(), must
    assert not (wrong := wrong_modes(data)), "\n".join(wrong)


def wrong_modes(data: Path) -> list[str]:
    """Everything under ``data`` whose mode is not 0700 (directories), 0600 (files, sockets)
    or 0644 (the public ``PUBLIC`` files): one line each."""
    wrong = []
    for path in [data, *data.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_socket():
            want = 0o600
        elif path.is_dir():
            want = 0o700
        else:
            want = 0o644 if path.name in PUBLIC else 0o600
        if mode != want:
            wrong.append(f"{path.relative_to(data)}: {mode:o}, expected {want:o}")
    return wrong
