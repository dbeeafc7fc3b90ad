"""``MailStack``: the real daemons (mta, mda, imap, pop3) on free ports in a temp directory.

>>> with MailStack() as stack:
...     user = stack.add_user("carol@example.test")
...     msg = stack.wait_for_message(user.address, subject="welcome", timeout=10)

Each daemon is its own process running what ``mailstack serve NAME`` runs (forked from a warm
fork server by default, see :mod:`.forkserver`). Start-up cost is kept low: TLS files are made
once per process and copied, accounts are written straight into the users file with cheap
argon2 parameters. :meth:`MailStack.reset` empties mailboxes, accounts and the queue without a
restart. :class:`AsyncMailStack` is the same for ``async with``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import secrets
import shutil
import signal
import socket
import ssl
import tempfile
import threading
import time
import tomllib
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any, TypeVar

from argon2 import PasswordHasher

from ..accounts.users import UserDB, normalize_address
from ..config import Config, load
from ..mta.lmtp_client import LMTPConnection
from ..mta.queue import new_queue_id
from ..runtime.tls import client_context, ensure_tls_files
from ..store.maildir import create_user_mailbox, mailbox_path
from .launcher import Launcher, get_launcher
from .mailboxes import original_recipients, read_folder, subject_matches
from .ports import free_port

DAEMONS = ("mda", "mta", "imap", "pop3")
LISTENERS = {"mta": ("smtp", "submission", "submissions"), "mda": ("lmtp",),
             "imap": ("imap", "imaps"), "pop3": ("pop3", "pop3s")}
CAPTURE_ADDRESS = "capture@capture.test"
CAPTURE_PASSWORD = "capture"
# Accounts of a test stack are hashed with the smallest argon2 parameters: a test's password
# protects nothing, and logins (which verify with the parameters stored in the hash) stay fast.
_cheap_hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
T = TypeVar("T")


class MailStackError(RuntimeError):
    """The stack did not start, or a helper could not do what was asked."""


@dataclass(frozen=True)
class User:
    """An account of the stack: log in with the full address and the password."""

    address: str
    password: str

    def __str__(self) -> str:
        return self.address


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


# -- TLS files: generated once per process and hostname/domains, then copied ---------------------
_tls_lock = threading.Lock()
_tls_cache: dict[tuple[str, tuple[str, ...]], Path] = {}
_tls_root: Path | None = None


def _tls_source(hostname: str, domains: tuple[str, ...]) -> Path:
    global _tls_root
    with _tls_lock:
        key = (hostname, domains)
        if key not in _tls_cache:
            if _tls_root is None:
                _tls_root = Path(tempfile.mkdtemp(prefix="mailstack-tls-"))
                atexit.register(shutil.rmtree, _tls_root, True)
            base = _tls_root / str(len(_tls_cache))
            cfg = load(_write_min_config(base, hostname, domains), env={})
            _tls_cache[key] = ensure_tls_files(cfg).cert.parent
        return _tls_cache[key]


def _merge(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """Deep-merge ``extra`` into ``into`` (tables merge; arrays of tables are appended)."""
    for key, value in extra.items():
        old = into.get(key)
        if isinstance(old, dict) and isinstance(value, Mapping):
            _merge(old, value)
        elif isinstance(old, list) and isinstance(value, list) and key == "faults":
            old.extend(value)
        else:
            into[key] = value


def _key(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").isalnum() else _toml(name)


def _dump_toml(doc: Mapping[str, Any], prefix: str = "") -> str:
    """TOML for the config's shapes: scalars, lists, tables, arrays of tables."""
    lines: list[str] = []
    tables: list[str] = []
    for key, value in doc.items():
        name = f"{prefix}.{_key(key)}" if prefix else _key(key)
        if isinstance(value, Mapping):
            tables.append(f"[{name}]\n" + _dump_toml(value, name))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            tables += [f"[[{name}]]\n" + _dump_toml(v, name) for v in value]
        else:
            lines.append(f"{_key(key)} = {_toml(value)}\n")
    return "".join(lines) + "".join(tables)


def _write_min_config(base: Path, hostname: str, domains: tuple[str, ...]) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    path = base / "tls.toml"
    path.write_text(f"[server]\nhostname = {_toml(hostname)}\ndomains = {_toml(list(domains))}\n"
                    f"data_dir = {_toml(str(base / 'data'))}\n")
    return path


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code, even inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class MailStack:
    """A running mail stack for tests; a context manager (``start()``/``close()`` by hand too).

    Options: ``domains`` (local mail domains), ``capture`` (accept and keep mail for any
    address in the catch-all account, relay nothing), ``faults`` (``[[faults]]`` tables as
    dicts: ``{"match": "*@fail.test", "at": "rcpt", "reply": "451 4.3.0 try later"}``),
    ``launcher`` (``"fork"`` or ``"subprocess"``), ``data_dir`` (default: a new temp dir,
    removed on close), ``extra_config`` (TOML merged into the generated config: its keys
    override the generated ones).
    """

    host = "127.0.0.1"

    def __init__(self, *, domains: Iterable[str] = ("example.test",),
                 hostname: str = "mail.example.test", capture: bool = False,
                 faults: Iterable[Mapping[str, Any]] = (), launcher: str = "fork",
                 data_dir: str | os.PathLike[str] | None = None, extra_config: str = "",
                 log_level: str = "info", start_timeout: float = 20.0) -> None:
        self.domains = tuple(d.lower() for d in domains)
        self.hostname = hostname
        self.capture = capture
        self.faults = [dict(f) for f in faults]
        self.launcher_kind = launcher
        self._own_dir = data_dir is None
        self.base = Path(data_dir) if data_dir is not None else None
        self.extra_config = extra_config
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.ports: dict[str, int] = {}
        self.pids: dict[str, int] = {}
        self.cfg: Config | None = None
        self.capture_user: User | None = None
        self._launcher: Launcher | None = None
        self._ssl: ssl.SSLContext | None = None
        self.startup_seconds = 0.0

    # -- life cycle ------------------------------------------------------------------------
    def __enter__(self) -> MailStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return bool(self.pids)

    def alive(self) -> bool:
        """Every daemon process is still running."""
        if not self.pids or self._launcher is None:
            return False
        return not self._launcher.exited(list(self.pids.values()))

    def start(self) -> MailStack:
        if self.pids:
            return self
        started = time.perf_counter()
        if self.base is None:
            self.base = Path(tempfile.mkdtemp(prefix="mailstack-"))
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "logs").mkdir(exist_ok=True)
        self.ports = {name: free_port() for names in LISTENERS.values() for name in names}
        config_path = self.base / "mailstack.toml"
        config_path.write_text(self._config_text())
        self.cfg = load(config_path, env={})
        data = self.cfg.data_dir
        (data / "mail").mkdir(parents=True, exist_ok=True)
        tls_dst = data / "tls"
        if not tls_dst.exists():
            shutil.copytree(_tls_source(self.hostname, self.domains), tls_dst)
        if self.capture:
            self.capture_user = self.add_user(self.cfg.capture.address,
                                              self.cfg.capture.password)
        self._launcher = get_launcher(self.launcher_kind)
        try:
            for name in DAEMONS:
                self.pids[name] = self._launcher.spawn(name, config_path,
                                                       self.base / "logs" / f"{name}.log")
            self._wait_listening()
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.perf_counter() - started
        return self

    def _config_text(self) -> str:
        """The generated config with ``extra_config`` merged in: its keys override the
        generated ones table by table (``[mta] max_message_size = ...`` works although the
        stack writes an ``[mta]`` table itself)."""
        assert self.base is not None
        p = self.ports
        doc: dict[str, Any] = {
            "server": {"hostname": self.hostname, "domains": list(self.domains),
                       "data_dir": str(self.base / "data"), "bind": ["127.0.0.1"],
                       "log_level": self.log_level},
            "mta": {"smtp": p["smtp"], "submission": p["submission"],
                    "submissions": p["submissions"], "retry_initial": "1s", "retry_max": "2s"},
            "mda": {"lmtp": p["lmtp"]}, "imap": {"imap": p["imap"], "imaps": p["imaps"]},
            "pop3": {"pop3": p["pop3"], "pop3s": p["pop3s"]}, "autoconfig": {"http": 0},
        }
        if self.capture:
            doc["capture"] = {"enabled": True, "address": CAPTURE_ADDRESS,
                              "password": CAPTURE_PASSWORD}
        if self.faults:
            doc["faults"] = [dict(f) for f in self.faults]
        try:
            extra = tomllib.loads(self.extra_config)
        except tomllib.TOMLDecodeError as exc:
            raise MailStackError(f"extra_config is not valid TOML: {exc}") from None
        _merge(doc, extra)
        return _dump_toml(doc)

    def _wait_listening(self) -> None:
        assert self._launcher is not None
        deadline = time.monotonic() + self.start_timeout
        for port in self.ports.values():
            while True:
                try:
                    with socket.create_connection((self.host, port), 0.5):
                        break
                except OSError:
                    pass
                dead = self._launcher.exited(list(self.pids.values()))
                if dead or time.monotonic() > deadline:
                    names = [n for n, pid in self.pids.items() if pid in dead]
                    why = f"{', '.join(names)} exited" if names else \
                        f"port {port} did not answer within {self.start_timeout:.0f}s"
                    raise MailStackError(f"mailstack did not start: {why}\n{self.logs()}")
                time.sleep(0.005)

    def close(self, timeout: float = 5.0) -> None:
        """Stop every daemon (SIGTERM, then SIGKILL after ``timeout``); remove the temp dir."""
        if self._launcher is not None and self.pids:
            self._launcher.stop(list(self.pids.values()), timeout)
        self.pids = {}
        if self._own_dir and self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)

    def logs(self) -> str:
        """Every daemon's log so far (for failure messages)."""
        if self.base is None:
            return ""
        out = []
        for name in DAEMONS:
            path = self.base / "logs" / f"{name}.log"
            if path.exists():
                out.append(f"--- {name} ---\n{path.read_text('utf-8', 'replace')}")
        return "\n".join(out)

    # -- connection details ----------------------------------------------------------------
    @property
    def config(self) -> Config:
        if self.cfg is None:
            raise MailStackError("the stack is not started")
        return self.cfg

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    @property
    def config_file(self) -> Path:
        return Path(self.config.source)

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the stack's CA (host names: localhost, 127.0.0.1)."""
        if self._ssl is None:
            self._ssl = client_context(self.ca_file)
        return self._ssl

    # -- accounts and mail -----------------------------------------------------------------
    def add_user(self, address: str, password: str | None = None) -> User:
        """Create (or give a new password to) an account with its Maildir; fast."""
        password = password if password is not None else secrets.token_urlsafe(12)
        addr = normalize_address(address)
        UserDB(self.data_dir / "users").put_hash(addr, _cheap_hasher.hash(password))
        create_user_mailbox(self.data_dir, addr)
        return User(addr, password)

    def users(self) -> list[str]:
        return UserDB(self.data_dir / "users").list()

    def _account(self, address: str) -> str:
        addr = address.strip().strip("<>").lower()
        local, _, domain = addr.rpartition("@")
        if "+" in local and not (mailbox_path(self.data_dir, addr)).exists():
            return f"{local.split('+', 1)[0]}@{domain}"
        return addr

    def messages(self, address: str, folder: str = "INBOX") -> list[EmailMessage]:
        """The messages in an account's folder, oldest first, parsed (``email.policy.default``).

        In capture mode (where all mail goes to the catch-all account) any other address gives
        the captured messages that were sent to it (by their ``X-Original-To`` headers).
        """
        account = self._account(address)
        if self.capture_user is not None and account != self.capture_user.address:
            wanted = {account, address.strip().strip("<>").lower()}
            return [m for m in read_folder(self.data_dir, self.capture_user.address, folder)
                    if wanted & set(original_recipients(m))]
        if not mailbox_path(self.data_dir, account).exists():
            return []
        return read_folder(self.data_dir, account, folder)

    def captured(self) -> list[EmailMessage]:
        """Every message in the catch-all account (capture mode)."""
        if self.capture_user is None:
            raise MailStackError("not in capture mode (MailStack(capture=True))")
        return read_folder(self.data_dir, self.capture_user.address)

    def find_message(self, address: str, *, subject: str | None = None,
                     folder: str = "INBOX") -> EmailMessage | None:
        for msg in self.messages(address, folder):
            if subject_matches(msg, subject):
                return msg
        return None

    def wait_for_message(self, address: str, *, subject: str | None = None,
                         timeout: float = 5.0, folder: str = "INBOX") -> EmailMessage:
        """The oldest message for ``address`` whose Subject contains ``subject`` (any when
        None, case-insensitive), waiting up to ``timeout`` seconds; raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.find_message(address, subject=subject, folder=folder)
            if msg is not None:
                return msg
            if time.monotonic() > deadline:
                raise TimeoutError(self._timeout_text(address, subject, timeout))
            time.sleep(0.01)

    def _timeout_text(self, address: str, subject: str | None, timeout: float) -> str:
        have = [str(m.get("Subject", "")) for m in self.messages(address)]
        what = f" with subject containing {subject!r}" if subject else ""
        return (f"no message for {address}{what} within {timeout}s "
                f"(subjects there: {have!r}; queue: {len(self._queue_files())} files)")

    def deliver(self, raw: bytes | str | Message, to: str | Iterable[str],
                sender: str = "") -> None:
        """Put a message into mailboxes through the real mda (LMTP), as the mta would."""
        _run_sync(self.adeliver(raw, to, sender))

    async def adeliver(self, raw: bytes | str | Message, to: str | Iterable[str],
                       sender: str = "") -> None:
        rcpts = [to] if isinstance(to, str) else list(to)
        data = raw.as_bytes() if isinstance(raw, Message) else \
            raw.encode() if isinstance(raw, str) else bytes(raw)
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self.capture_user is not None:
            data = b"".join(f"X-Original-To: {r}\r\n".encode() for r in rcpts) + data
            rcpts = [self.capture_user.address]
        conn = await LMTPConnection.open(self.host, self.ports["lmtp"], "mailstack-testing", 10)
        try:
            result = await conn.deliver(new_queue_id(), sender, rcpts, data, retry=False)
        finally:
            await conn.quit()
        failed = [f"{r}: {reply}" for r, reply in zip(rcpts, result.replies, strict=True)
                  if not reply.ok]
        if failed:
            raise MailStackError("delivery refused: " + "; ".join(failed))

    # -- between tests -----------------------------------------------------------------------
    def _queue_files(self) -> list[Path]:
        q = self.data_dir / "queue"
        return [p for p in q.iterdir() if p.is_file()] if q.exists() else []

    def _settle_queue(self, quiet: float = 0.05, limit: float = 1.0) -> None:
        """Let deliveries in flight finish (they take milliseconds): wait until the queue is
        empty or unchanged for ``quiet`` seconds, at most ``limit``; what stays is deferred."""
        last = {p.name for p in self._queue_files()}
        since = time.monotonic()
        deadline = since + limit
        while last and time.monotonic() < deadline:
            time.sleep(0.005)
            now = {p.name for p in self._queue_files()}
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return

    def reset(self) -> None:
        """Back to a fresh stack without a restart: no accounts (except the catch-all), empty
        mailboxes, an empty queue and delivery journal. Fast (milliseconds)."""
        data = self.data_dir
        self._settle_queue()
        for path in self._queue_files():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        mta = self.pids.get("mta")
        if mta:  # the runner forgets entries that are gone from disk (like `queue flush`)
            with contextlib.suppress(ProcessLookupError):
                os.kill(mta, signal.SIGUSR1)
        journal = data / "mda" / "delivered"
        if journal.exists():
            for path in journal.iterdir():
                with contextlib.suppress(OSError):
                    os.truncate(path, 0)
        users = UserDB(data / "users")
        keep = self.capture_user.address if self.capture_user else None
        for addr in users.list():
            if addr != keep:
                users.delete(addr)
        mail = data / "mail"
        if mail.exists():
            for domain in mail.iterdir():
                shutil.rmtree(domain, ignore_errors=True)
        if self.capture_user is not None:
            create_user_mailbox(data, self.capture_user.address)

    # -- conveniences ------------------------------------------------------------------------
    def url(self, listener: str) -> str:
        """``host:port`` of a listener (``smtp``, ``submission``, ``imaps``, ...)."""
        return f"{self.host}:{self.ports[listener]}"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<MailStack {state} {self.host} {self.ports}>"


class AsyncMailStack:
    """:class:`MailStack` for ``async with``; blocking steps run in worker threads.

    Attributes (``host``, ``ports``, ``ssl_context``, ``add_user``, ``messages``, ...) are
    those of the wrapped :attr:`stack`; ``wait_for_message``, ``deliver`` and ``reset`` are
    coroutines here.
    """

    def __init__(self, stack: MailStack | None = None, **options: Any) -> None:
        self.stack = stack if stack is not None else MailStack(**options)

    async def __aenter__(self) -> AsyncMailStack:
        await asyncio.to_thread(self.stack.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stack.close)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stack, name)

    async def wait_for_message(self, address: str, *, subject: str | None = None,
                               timeout: float = 5.0, folder: str = "INBOX") -> EmailMessage:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await asyncio.to_thread(self.stack.find_message, address, subject=subject,
                                          folder=folder)
            if msg is not None:
                return msg
            if loop.time() > deadline:
                raise TimeoutError(self.stack._timeout_text(address, subject, timeout))
            await asyncio.sleep(0.01)

    async def deliver(self, raw: bytes | str | Message, to: str | Iterable[str],
                      sender: str = "") -> None:
        await self.stack.adeliver(raw, to, sender)

    async def reset(self) -> None:
        await asyncio.to_thread(self.stack.reset)
