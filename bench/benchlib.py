"""What the benchmarks share: start a daemon of this checkout as production runs it (its own
process, ``mailstack serve NAME``) and wait until it listens."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from argon2 import PasswordHasher

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailstack.config import load  # noqa: E402
from mailstack.store.maildir import Maildir, create_user_mailbox  # noqa: E402


def serve(daemon: str, conf: Path, port: int, **popen: object) -> subprocess.Popen:
    """``mailstack serve DAEMON --config CONF`` from this checkout, once it listens on
    ``port`` of 127.0.0.1 (extra keyword arguments go to :class:`subprocess.Popen`)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **popen.pop("env", {})}  # type: ignore[arg-type]
    proc = subprocess.Popen([sys.executable, "-m", "mailstack", "serve", daemon, "--config",
                             str(conf)], env=env, **popen)  # type: ignore[call-overload]
    wait_port(port, proc)
    return proc


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    """Until something accepts on 127.0.0.1:``port``; exits the benchmark when ``proc`` dies
    or nothing listens within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the daemon exited ({proc.returncode}) before listening on {port}")
        if time.monotonic() > deadline:
            raise SystemExit(f"nothing listens on port {port} after {timeout:g} s")
        time.sleep(0.05)


def account(tmp: Path, sections: str, user: str, password: str, server: str = ""
            ) -> tuple[Path, Maildir]:
    """A config in ``tmp`` (``[server]`` for example.test on 127.0.0.1 with ``server``'s extra
    lines, then ``sections``),
    ``user`` with ``password`` (a cheap hash: logins are not what is measured) and the user's
    INBOX, empty."""
    conf = tmp / "mailstack.toml"
    conf.write_text(f'[server]\ndomains = ["example.test"]\ndata_dir = "{tmp / "data"}"\n'
                    f'bind = ["127.0.0.1"]\nlog_level = "warning"\n{server}{sections}')
    cfg = load(conf, env={})
    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    (cfg.data_dir / "users").write_text(f"{user}:{cheap.hash(password)}\n")
    return conf, create_user_mailbox(cfg.data_dir, user)
