"""``MailStack``: the real daemons (mta, mda, imap, pop3) on free ports in a temp directory.

>>> with MailStack() as stack:
...     user = stack.add_user("carol@example.test")
...     msg = stack.wait_for_message(user.address, subject="welcome", timeout=10)

Each daemon is its own process running what ``mailstack serve NAME`` runs (forked from a warm
fork server by default, see :mod:`.forkserver`). Start-up cost is kept low: TLS files are made
once per process and copied, accounts are written straight into the users file with cheap
argon2 parameters. :meth:`MailStack.reset` empties mailboxes, accounts, the queue, failed-login
counts and runtime faults without a restart. A test stack never sends mail out: mail for
domains it does not serve is kept in its catch-all account unless ``relay=True``.
:class:`AsyncMailStack` is the same for ``async with``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import signal
import sqlite3
import ssl
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any, TypeVar

from argon2 import PasswordHasher

from ..accounts.authlimit import connect_counts, db_path, forget_all
from ..accounts.users import UserDB, normalize_address
from ..config import _SECTION_TYPES, SECTION_ALIASES, Config, load
from ..mda.copylog import skip_pending
from ..mta.lmtp_client import LMTPConnection
from ..mta.queue import new_queue_id
from ..runtime import chaos
from ..runtime.tls import client_context, ensure_tls_files
from ..store.maildir import create_user_mailbox, mailbox_path
from .launcher import Launcher, get_launcher
from .mailboxes import Filter, MailMessage, original_recipients, read_folder
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
log = logging.getLogger("mailstack.testing")
#: config keys a stack sets itself: MAILSTACK_* variables for them are not passed on
OWNED_KEYS = {("server", "data_dir"), ("server", "bind"), ("chaos", "file"),
              ("mda", "socket"), ("http", "http"), ("http", "https"),
              *((s, k) for s, ks in LISTENERS.items() for k in ks)}


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


def config_dict(extra: str | Mapping[str, Any]) -> dict[str, Any]:
    """``extra_config`` as a dict: TOML text is parsed, a mapping copied."""
    if isinstance(extra, Mapping):
        return {k: config_dict(v) if isinstance(v, Mapping) else v for k, v in extra.items()}
    try:
        return tomllib.loads(extra)
    except tomllib.TOMLDecodeError as exc:
        raise MailStackError(f"extra_config is not valid TOML: {exc}") from None


def merge_config(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """Merge ``extra`` into ``into`` key by key (tables merge, ``faults`` arrays append)."""
    _merge(into, extra)


def _template_root() -> Path:
    global _tls_root
    with _tls_lock:
        if _tls_root is None:
            _tls_root = Path(tempfile.mkdtemp(prefix="mailstack-tls-"))
            atexit.register(shutil.rmtree, _tls_root, True)
        return _tls_root


_mailbox_template: Path | None = None


def _make_mailbox(data_dir: Path, address: str) -> None:
    """An account's Maildir with its folders, copied from one made once per process (what
    ``create_user_mailbox`` makes, without its directory fsyncs: test mail needs no
    durability)."""
    global _mailbox_template
    box = mailbox_path(data_dir, address)
    if box.exists():
        return
    if _mailbox_template is None:
        template = _template_root() / "mailbox"
        create_user_mailbox(template, "template@template.test")
        _mailbox_template = mailbox_path(template, "template@template.test")
    box.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = box.parent / f".{box.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    shutil.copytree(_mailbox_template, tmp, symlinks=True)
    try:
        tmp.rename(box)
    except OSError:  # made meanwhile (the mda, for a delivery)
        shutil.rmtree(tmp, ignore_errors=True)


def _edit_users(path: Path, change: Callable[[dict[str, str]], None]) -> None:
    """Change the users file as ``UserDB`` does (same lock, atomic replace) without its
    fsyncs; the daemons see the new file (a new inode) at their next look-up."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        users = dict(UserDB(path)._load(fresh=True))
        before = dict(users)
        change(users)
        if users == before:
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("".join(f"{a}:{h}\n" for a, h in sorted(users.items())))
        os.replace(tmp, path)


_closing: list[threading.Thread] = []


def _finish_close(launcher: Launcher, pids: list[int], base: Path | None,
                  timeout: float) -> None:
    """The rest of ``close(wait=False)``: wait for the daemons, then remove the directory."""
    deadline = time.monotonic() + timeout
    try:
        while len(launcher.exited(pids)) < len(pids) and time.monotonic() < deadline:
            time.sleep(0.01)
        launcher.stop(pids, 1.0)  # reaps them (SIGKILL for any still there)
    except (RuntimeError, OSError):  # the fork server is gone: its children went with it
        pass
    if base is not None:
        shutil.rmtree(base, ignore_errors=True)


@atexit.register
def _wait_for_closing() -> None:
    for thread in _closing:
        thread.join(10)


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


@dataclass
class InjectedFault:
    """A runtime fault on a running stack (:meth:`MailStack.add_fault`): ``id``, ``spec`` (as
    the daemons read it), ``hits`` (how often it fired), ``remove()``; a context manager that
    removes it at the end of the block."""

    id: int
    spec: dict[str, Any]
    stack: MailStack = field(repr=False)

    @property
    def hits(self) -> int:
        return chaos.hits(self.stack.chaos_file).get(self.id, 0)

    def remove(self) -> None:
        self.stack.remove_fault(self)

    def __enter__(self) -> InjectedFault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class MailStack:
    """A running mail stack for tests; a context manager (``start()``/``close()`` by hand too).

    Options: ``domains`` (local mail domains), ``capture`` (accept and keep mail for any
    address in the catch-all account), ``relay`` (really relay mail for other domains: off, so
    such mail is kept in the catch-all account), ``faults`` (``[[faults]]`` config tables for
    the stack's life; see :meth:`add_fault` for faults that come and go), ``seed`` (for
    faults with a ``probability``), ``launcher`` (``"fork"`` or ``"subprocess"``),
    ``data_dir`` (default: a new temp dir, removed on close), ``extra_config`` (TOML text or a
    dict merged key by key into the generated config), ``env`` (where ``MAILSTACK_<SECTION>_
    <KEY>`` variables come from: ``os.environ`` by default).
    """

    host = "127.0.0.1"

    def __init__(self, *, domains: Iterable[str] = ("example.test",),
                 hostname: str = "mail.example.test", capture: bool = False,
                 relay: bool = False, faults: Iterable[Mapping[str, Any]] = (),
                 seed: int = 0, launcher: str = "fork",
                 data_dir: str | os.PathLike[str] | None = None,
                 extra_config: str | Mapping[str, Any] = "",
                 env: Mapping[str, str] | None = None, log_level: str = "info",
                 start_timeout: float = 20.0) -> None:
        self.domains = tuple(d.lower() for d in domains)
        self.hostname = hostname
        self.capture = capture
        self.relay = relay
        self.faults = [dict(f) for f in faults]
        self.seed = seed
        self.launcher_kind = launcher
        self._own_dir = data_dir is None
        self.base = Path(data_dir) if data_dir is not None else None
        self.extra_config = extra_config
        self.env = env
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.ports: dict[str, int] = {}
        self.pids: dict[str, int] = {}
        self.cfg: Config | None = None
        self.capture_user: User | None = None
        self._launcher: Launcher | None = None
        self._ssl: ssl.SSLContext | None = None
        self._env: dict[str, str] = {}
        self._runtime_faults: list[InjectedFault] = []
        self._fault_ids = 0
        self._catch_all_fresh: tuple[list[str], ...] = ()
        self._authdb: sqlite3.Connection | None = None
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
        """Start the daemons and wait until every listener answers; raises
        :class:`MailStackError` (a daemon exited) or ``ConfigError`` (naming the bad key)."""
        if self.pids:
            return self
        started = time.perf_counter()
        if self.base is None:
            self.base = Path(tempfile.mkdtemp(prefix="mailstack-"))
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.perf_counter() - started
        return self

    def _start(self) -> None:
        assert self.base is not None
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "logs").mkdir(exist_ok=True)
        self.ports = {name: free_port() for names in LISTENERS.values() for name in names}
        config_path = self.base / "mailstack.toml"
        config_path.write_text(self._config_text())
        self._env = self._forwarded_env()
        self.cfg = load(config_path, env=self._env)
        data = self.cfg.data_dir
        (data / "mail").mkdir(parents=True, exist_ok=True)
        tls_dst = data / "tls"
        if not tls_dst.exists():
            shutil.copytree(_tls_source(self.hostname, self.domains), tls_dst)
        if self.cfg.capture.active:  # made here with a cheap hash: the mta only checks it
            self.capture_user = self.add_user(self.cfg.capture.address,
                                              self.cfg.capture.password)
            self._catch_all_fresh = self._catch_all_state(
                mailbox_path(data, self.capture_user.address))
        if self.relay and not self.capture:
            log.warning("mailstack test stack in %s relays mail for other domains to their "
                        "mail servers (relay=True)", self.base)
        self._launcher = get_launcher(self.launcher_kind)
        for name in DAEMONS:
            self.pids[name] = self._launcher.spawn(name, config_path,
                                                   self.base / "logs" / f"{name}.log",
                                                   env=self._env)
        self._wait_listening()

    def _forwarded_env(self) -> dict[str, str]:
        """``MAILSTACK_<SECTION>_<KEY>`` variables for the daemons (and this config), except
        those for keys the stack sets itself (ports, data_dir, bind, ...)."""
        out = {}
        for var, value in (os.environ if self.env is None else self.env).items():
            if not var.startswith("MAILSTACK_"):
                continue
            section, _, key = var[len("MAILSTACK_"):].lower().partition("_")
            section = SECTION_ALIASES.get(section, section)
            if section not in _SECTION_TYPES or not key:
                continue
            if (section, key) in OWNED_KEYS:
                log.warning("%s ignored: a test stack sets [%s] %s itself", var, section, key)
                continue
            out[var] = value
        return out

    def _config_text(self) -> str:
        """The generated config with ``extra_config`` merged in key by key: its keys override
        the generated ones (``[mta] max_message_size = ...`` works although the stack writes
        an ``[mta]`` table itself)."""
        assert self.base is not None
        p = self.ports
        doc: dict[str, Any] = {
            "server": {"hostname": self.hostname, "domains": list(self.domains),
                       "data_dir": str(self.base / "data"), "bind": ["127.0.0.1"],
                       "log_level": self.log_level},
            "mta": {"smtp": p["smtp"], "submission": p["submission"],
                    "submissions": p["submissions"], "retry_initial": "1s", "retry_max": "2s"},
            # a small copy log: its two files are written full of zeros at the first start
            "mda": {"lmtp": p["lmtp"], "copy_log_size": "1MiB"},
            "imap": {"imap": p["imap"], "imaps": p["imaps"]},
            "pop3": {"pop3": p["pop3"], "pop3s": p["pop3s"]}, "http": {"http": 0, "https": 0},
            "capture": {"enabled": self.capture, "outbound": not (self.capture or self.relay),
                        "address": CAPTURE_ADDRESS, "password": CAPTURE_PASSWORD},
            "chaos": {"file": "run/chaos.json", "seed": self.seed},
        }
        if self.faults:
            doc["faults"] = [dict(f) for f in self.faults]
        _merge(doc, config_dict(self.extra_config))
        return _dump_toml(doc)

    def _wait_listening(self) -> None:
        """Wait until every daemon logged its ``listening on`` line for each of its ports (it
        logs one once the socket listens): no probe connections that the daemons would have
        to serve while they start."""
        assert self._launcher is not None and self.base is not None
        deadline = time.monotonic() + self.start_timeout
        expect = {name: [f"listening on {self.host}:{self.ports[lst]} (".encode()
                         for lst in LISTENERS[name]] for name in DAEMONS}
        pending = set(DAEMONS)
        while True:
            for name in list(pending):
                try:
                    text = (self.base / "logs" / f"{name}.log").read_bytes()
                except FileNotFoundError:
                    continue
                if all(line in text for line in expect[name]):
                    pending.discard(name)
            if not pending:
                return
            dead = self._launcher.exited(list(self.pids.values()))
            if dead or time.monotonic() > deadline:
                names = [n for n, pid in self.pids.items() if pid in dead]
                why = f"{', '.join(names)} exited" if names else \
                    f"{', '.join(sorted(pending))} did not listen within " \
                    f"{self.start_timeout:.0f}s"
                raise MailStackError(f"mailstack did not start: {why}\n{self.logs()}")
            time.sleep(0.002)

    def close(self, timeout: float = 5.0, *, wait: bool = True) -> None:
        """Stop every daemon (SIGTERM, then SIGKILL after ``timeout``); remove the temp dir.

        ``wait=False``: send SIGTERM and return at once; a background thread waits for the
        daemons to exit and then removes the directory (the plugin's function scope does
        this; the process waits for such threads when it exits)."""
        if self._authdb is not None:
            self._authdb.close()
            self._authdb = None
        launcher, pids, self.pids = self._launcher, list(self.pids.values()), {}
        base = self.base if self._own_dir else None
        if not wait and launcher is not None and pids:
            launcher.terminate(pids)
            thread = threading.Thread(target=_finish_close, args=(launcher, pids, base, timeout),
                                      name="mailstack-close", daemon=True)
            _closing[:] = [t for t in _closing if t.is_alive()]
            _closing.append(thread)
            thread.start()
            return
        if launcher is not None and pids:
            launcher.stop(pids, timeout)
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)

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
        hashed = _cheap_hasher.hash(password)
        _edit_users(self.data_dir / "users", lambda users: users.__setitem__(addr, hashed))
        _make_mailbox(self.data_dir, addr)
        return User(addr, password)

    def users(self) -> list[str]:
        """The accounts, sorted; the catch-all account only in capture mode."""
        hide = self.capture_user.address if self.capture_user and not self.capture else None
        return [a for a in UserDB(self.data_dir / "users").list() if a != hide]

    def _account(self, address: str) -> str:
        addr = address.strip().strip("<>").lower()
        local, _, domain = addr.rpartition("@")
        if "+" in local and not (mailbox_path(self.data_dir, addr)).exists():
            return f"{local.split('+', 1)[0]}@{domain}"
        return addr

    def _captured_for(self, address: str) -> bool:
        """Mail for ``address`` lands in the catch-all account (capture mode; or a domain the
        stack does not serve)."""
        if self.capture_user is None or address == self.capture_user.address:
            return False
        return self.capture or not self.config.is_local_domain(address.rpartition("@")[2])

    def messages(self, address: str, folder: str = "INBOX") -> list[MailMessage]:
        """The messages in an account's folder, oldest first, parsed (``email.policy.default``,
        as :class:`MailMessage`). An address without an account gives ``[]``.

        Mail the stack captured (capture mode, or any address on a domain it does not serve)
        is found by the address it was sent to (its ``X-Original-To`` headers).
        """
        account = self._account(address)
        if self._captured_for(account):
            assert self.capture_user is not None
            wanted = {account, address.strip().strip("<>").lower()}
            return [m for m in read_folder(self.data_dir, self.capture_user.address, folder)
                    if wanted & set(original_recipients(m))]
        if not mailbox_path(self.data_dir, account).exists():
            return []
        return read_folder(self.data_dir, account, folder)

    def captured(self) -> list[MailMessage]:
        """Every message in the catch-all account: all mail in capture mode, otherwise the
        mail for other domains that the stack kept instead of relaying it."""
        if self.capture_user is None:
            raise MailStackError("this stack relays (relay=True): nothing is captured")
        return read_folder(self.data_dir, self.capture_user.address)

    def all_messages(self, folder: str = "INBOX") -> list[MailMessage]:
        """The messages of every account's folder (the catch-all's too), account by account."""
        out: list[MailMessage] = []
        for account in UserDB(self.data_dir / "users").list():
            if mailbox_path(self.data_dir, account).exists():
                out += read_folder(self.data_dir, account, folder)
        return out

    def find_messages(self, address: str | None = None, *, subject: str | None = None,
                      sender: str | None = None, to: str | None = None,
                      text: str | None = None, headers: Mapping[str, str] | None = None,
                      where: Callable[[MailMessage], bool] | None = None,
                      folder: str = "INBOX") -> list[MailMessage]:
        """The messages for ``address`` (None: in every account) that pass every filter given
        (case-insensitive substrings of Subject, From, a recipient, the text or HTML body,
        header values; ``where``: any predicate), oldest first. No waiting."""
        flt = Filter(subject, sender, to, text, dict(headers or {}), where)
        msgs = self.all_messages(folder) if address is None else self.messages(address, folder)
        return [m for m in msgs if flt(m)]

    def find_message(self, address: str | None = None, *, subject: str | None = None,
                     folder: str = "INBOX", **filters: Any) -> MailMessage | None:
        """The oldest message :meth:`find_messages` would give, or None. No waiting."""
        found = self.find_messages(address, subject=subject, folder=folder, **filters)
        return found[0] if found else None

    def _poll(self, check: Callable[[], T | None], timeout: float, fail: Callable[[], str]) -> T:
        deadline = time.monotonic() + timeout
        while True:
            got = check()
            if got is not None:
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(fail())
            time.sleep(0.005)

    def wait_for_message(self, address: str | None = None, *, subject: str | None = None,
                         timeout: float = 5.0, folder: str = "INBOX",
                         **filters: Any) -> MailMessage:
        """The oldest message for ``address`` (None: any account) that passes the filters of
        :meth:`find_messages` (``subject``, ``sender``, ``to``, ``text``, ``headers``,
        ``where``), waiting up to ``timeout`` seconds; raises TimeoutError."""
        filters.update(subject=subject, folder=folder)
        return self._poll(lambda: self.find_message(address, **filters), timeout,
                          lambda: self._timeout_text(address, 1, filters, timeout))

    def wait_for_messages(self, address: str | None = None, count: int = 1, *,
                          timeout: float = 5.0, folder: str = "INBOX",
                          **filters: Any) -> list[MailMessage]:
        """At least ``count`` messages passing the filters (all of them, oldest first),
        waiting up to ``timeout`` seconds; raises TimeoutError."""
        filters["folder"] = folder

        def check() -> list[MailMessage] | None:
            found = self.find_messages(address, **filters)
            return found if len(found) >= count else None
        return self._poll(check, timeout,
                          lambda: self._timeout_text(address, count, filters, timeout))

    def assert_no_mail(self, address: str | None = None, *, timeout: float = 0.5,
                       folder: str = "INBOX", **filters: Any) -> None:
        """Fail (AssertionError) as soon as a message passing the filters turns up for
        ``address`` (None: anywhere) within ``timeout`` seconds; it takes the whole
        ``timeout`` when none does."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find_messages(address, folder=folder, **filters)
            if found:
                raise AssertionError(self._unexpected_text(address, found, filters))
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)

    def _filter_text(self, filters: Mapping[str, Any]) -> str:
        keys = ("subject", "sender", "to", "text", "headers", "where")
        return Filter(**{k: filters[k] for k in keys if filters.get(k) is not None}).describe()

    def _timeout_text(self, address: str | None, count: int, filters: Mapping[str, Any],
                      timeout: float) -> str:
        folder = filters.get("folder", "INBOX")
        have = self.all_messages(folder) if address is None else self.messages(address, folder)
        subjects = [str(m.get("Subject", "")) for m in have]
        where = f"for {address}" if address else "in any account"
        many = "a message" if count == 1 else f"{count} messages"
        return (f"no {many} {where}{self._filter_text(filters)} within {timeout}s "
                f"(subjects there: {subjects!r}; queue: {len(self._queue_files())} files)")

    def _unexpected_text(self, address: str | None, found: list[MailMessage],
                         filters: Mapping[str, Any]) -> str:
        where = f"for {address}" if address else "in the stack"
        subjects = [str(m.get("Subject", "")) for m in found]
        return f"unexpected mail {where}{self._filter_text(filters)}: subjects {subjects!r}"

    def deliver(self, raw: bytes | str | Message, to: str | Iterable[str],
                sender: str = "") -> None:
        """Put a message into mailboxes through the real mda (LMTP), as the mta would
        (addresses on other domains: into the catch-all account, as the mta keeps them)."""
        _run_sync(self.adeliver(raw, to, sender))

    async def adeliver(self, raw: bytes | str | Message, to: str | Iterable[str],
                       sender: str = "") -> None:
        """:meth:`deliver` as a coroutine (for code already in an event loop)."""
        rcpts = [to] if isinstance(to, str) else list(to)
        data = raw.as_bytes() if isinstance(raw, Message) else \
            raw.encode() if isinstance(raw, str) else bytes(raw)
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        captured = [r for r in rcpts if self._captured_for(r.strip().strip("<>").lower())]
        local = [r for r in rcpts if r not in captured]
        batches = [(local, data)] if local else []
        if captured:
            assert self.capture_user is not None
            batches.append(([self.capture_user.address], b"".join(
                f"X-Original-To: {r}\r\n".encode() for r in captured) + data))
        conn = await LMTPConnection.open(self.host, self.ports["lmtp"], "mailstack-testing", 10)
        failed = []
        try:
            for batch, body in batches:
                result = await conn.deliver(new_queue_id(), sender, batch, body, retry=False)
                failed += [f"{r}: {reply}" for r, reply in
                           zip(batch, result.replies, strict=True) if not reply.ok]
        finally:
            await conn.quit()
        if failed:
            raise MailStackError("delivery refused: " + "; ".join(failed))

    # -- runtime faults ----------------------------------------------------------------------
    @property
    def chaos_file(self) -> Path:
        """The fault file the daemons re-read (``[chaos] file``)."""
        path = Path(self.config.chaos.file)
        return path if path.is_absolute() else self.data_dir / path

    def add_fault(self, at: str, match: str = "*", *, reply: str = "", drop: bool = False,
                  latency: float | str | None = None, times: int | None = None,
                  probability: float = 1.0) -> InjectedFault:
        """Make the running stack misbehave from the next command on.

        ``at``: ``smtp.connect``, ``smtp.ehlo``, ``smtp.starttls``, ``smtp.auth``,
        ``smtp.mail``, ``smtp.rcpt``, ``smtp.data`` (after the message), ``lmtp.*`` (the mta's
        deliveries to the mda), ``imap.<command>`` (``imap.login``, ``imap.select``,
        ``imap.fetch``, ``imap.append``, ...), ``pop3.<command>`` (``pop3.auth``,
        ``pop3.retr``, ...); bare SMTP names (``"rcpt"``) mean ``smtp.*``. ``match``: a glob
        on the recipient (rcpt, data), sender (mail), HELO name (ehlo), login (auth, imap,
        pop3) or client address (connect). Then ``reply`` (``"451 4.3.0 try later"``,
        ``"NO [UNAVAILABLE] later"``, ``"-ERR [SYS/TEMP] later"``), or ``drop=True`` (close the
        connection; also what a fault with neither does), after ``latency`` (seconds or
        ``"200ms"``). ``times``: at most that often; ``probability``: drawn per match from a
        generator seeded with ``seed`` and the fault. Removed by :meth:`reset`.
        """
        spec: dict[str, Any] = {"at": at, "match": match, "reply": reply, "drop": drop,
                                "probability": probability}
        if latency is not None:
            spec["latency"] = latency
        if times is not None:
            spec["times"] = times
        return self._add_fault_spec(spec)

    def _add_fault_spec(self, spec: Mapping[str, Any]) -> InjectedFault:
        norm = chaos.normalize({k: v for k, v in spec.items() if k != "id"})
        if not (norm.get("reply") or norm.get("latency")):
            norm["drop"] = True
        self._fault_ids += 1
        norm["id"] = self._fault_ids
        fault = InjectedFault(self._fault_ids, norm, self)
        self._runtime_faults.append(fault)
        self._write_faults()
        return fault

    def remove_fault(self, fault: InjectedFault | int) -> None:
        """Take a runtime fault away (the next command is served normally)."""
        fid = fault if isinstance(fault, int) else fault.id
        self._runtime_faults = [f for f in self._runtime_faults if f.id != fid]
        self._write_faults()

    def clear_faults(self) -> None:
        """Remove every runtime fault (and their hit counts)."""
        self._runtime_faults = []
        self._write_faults()
        chaos.clear_hits(self.chaos_file)

    @property
    def active_faults(self) -> list[InjectedFault]:
        """The runtime faults now in place, oldest first."""
        return list(self._runtime_faults)

    def _write_faults(self) -> None:
        chaos.write(self.chaos_file, [f.spec for f in self._runtime_faults], self.seed)

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
            time.sleep(0.002)
            now = {p.name for p in self._queue_files()}
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return

    def reset(self) -> None:
        """Back to a fresh stack without a restart: no accounts (except the catch-all), empty
        mailboxes, an empty queue and delivery journal, no failed-login counts, no runtime
        faults. Fast (milliseconds)."""
        data = self.data_dir
        if self._runtime_faults or self.chaos_file.exists() \
                or chaos.hits_path(self.chaos_file).exists():
            self.clear_faults()
        self._settle_queue()
        queued = self._queue_files()
        for path in queued:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        mta = self.pids.get("mta")
        if mta and queued:  # the runner forgets entries that are gone from disk (`queue flush`)
            with contextlib.suppress(ProcessLookupError):
                os.kill(mta, signal.SIGUSR1)
        # no later start of the mda may rebuild the copies of before the reset
        skip_pending(data / "mda" / "copies")
        journal = data / "mda" / "delivered"
        if journal.exists():
            for path in journal.iterdir():
                with contextlib.suppress(OSError):
                    if path.stat().st_size:
                        os.truncate(path, 0)
        keep = self.capture_user.address if self.capture_user else None

        def only_the_catch_all(accounts: dict[str, str]) -> None:
            for addr in [a for a in accounts if a != keep]:
                del accounts[addr]
        _edit_users(data / "users", only_the_catch_all)
        mail = data / "mail"
        if mail.exists():
            gone = [d for d in mail.iterdir()
                    if keep is None or d.name != keep.rpartition("@")[2]]
            self._discard(gone)
        if keep is not None:
            self._empty_catch_all(keep)
        self._forget_failed_logins()

    def _forget_failed_logins(self) -> None:
        path = db_path(self.config)
        if self._authdb is None and path.exists():
            self._authdb = connect_counts(path)
        if self._authdb is not None:
            forget_all(path, self._authdb)

    def _discard(self, paths: list[Path]) -> None:
        """Move directories out of the way at once (a rename) and delete them in the
        background: removing a few Maildirs costs milliseconds, a rename microseconds."""
        if not paths:
            return
        trash = self.data_dir / "trash"
        trash.mkdir(exist_ok=True)
        moved = []
        for path in paths:
            dest = trash / f"{path.name}.{secrets.token_hex(4)}"
            try:
                path.rename(dest)
                moved.append(dest)
            except OSError:
                shutil.rmtree(path, ignore_errors=True)
        if moved:
            threading.Thread(target=lambda: [shutil.rmtree(p, ignore_errors=True)
                                             for p in moved], daemon=True).start()

    def _empty_catch_all(self, address: str) -> None:
        """Re-create the catch-all's Maildir unless nothing was filed or made in it."""
        box = mailbox_path(self.data_dir, address)
        if self._catch_all_state(box) != self._catch_all_fresh:
            self._discard([box.parent])
            _make_mailbox(self.data_dir, address)
            self._catch_all_fresh = self._catch_all_state(box)

    @staticmethod
    def _catch_all_state(box: Path) -> tuple[list[str], ...]:
        """The names in the catch-all's domain directory, its Maildir, and its new/ and cur/."""
        out = []
        for d in (box.parent, box, box / "new", box / "cur"):
            try:
                out.append(sorted(os.listdir(d)))
            except FileNotFoundError:
                out.append([])
        return tuple(out)

    # -- conveniences ------------------------------------------------------------------------
    def url(self, listener: str) -> str:
        """``host:port`` of a listener (``smtp``, ``submission``, ``imaps``, ...); no scheme."""
        return f"{self.host}:{self.ports[listener]}"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<MailStack {state} {self.host} {self.ports}>"


class AsyncMailStack:
    """:class:`MailStack` for ``async with``; blocking steps run in worker threads.

    Attributes and plain methods (``host``, ``ports``, ``ssl_context``, ``add_user``,
    ``messages``, ``add_fault``, ...) are those of the wrapped :attr:`stack`;
    ``wait_for_message``, ``wait_for_messages``, ``assert_no_mail``, ``deliver``, ``reset``,
    ``start`` and ``close`` are coroutines here.
    """

    def __init__(self, stack: MailStack | None = None, **options: Any) -> None:
        self.stack = stack if stack is not None else MailStack(**options)

    async def start(self) -> AsyncMailStack:
        await asyncio.to_thread(self.stack.start)
        return self

    async def close(self) -> None:
        await asyncio.to_thread(self.stack.close)

    async def __aenter__(self) -> AsyncMailStack:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stack, name)

    async def _poll(self, check: Callable[[], T | None], timeout: float,
                    fail: Callable[[], str]) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            got = await asyncio.to_thread(check)
            if got is not None:
                return got
            if loop.time() > deadline:
                raise TimeoutError(await asyncio.to_thread(fail))
            await asyncio.sleep(0.005)

    async def wait_for_message(self, address: str | None = None, *,
                               subject: str | None = None, timeout: float = 5.0,
                               folder: str = "INBOX", **filters: Any) -> MailMessage:
        """:meth:`MailStack.wait_for_message`, awaitable."""
        s = self.stack
        filters.update(subject=subject, folder=folder)
        return await self._poll(lambda: s.find_message(address, **filters), timeout,
                                lambda: s._timeout_text(address, 1, filters, timeout))

    async def wait_for_messages(self, address: str | None = None, count: int = 1, *,
                                timeout: float = 5.0, folder: str = "INBOX",
                                **filters: Any) -> list[MailMessage]:
        """:meth:`MailStack.wait_for_messages`, awaitable."""
        s = self.stack
        filters["folder"] = folder

        def check() -> list[MailMessage] | None:
            found = s.find_messages(address, **filters)
            return found if len(found) >= count else None
        return await self._poll(check, timeout,
                                lambda: s._timeout_text(address, count, filters, timeout))

    async def assert_no_mail(self, address: str | None = None, *, timeout: float = 0.5,
                             folder: str = "INBOX", **filters: Any) -> None:
        """:meth:`MailStack.assert_no_mail`, awaitable."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = await asyncio.to_thread(self.stack.find_messages, address, folder=folder,
                                            **filters)
            if found:
                raise AssertionError(self.stack._unexpected_text(address, found, filters))
            if loop.time() > deadline:
                return
            await asyncio.sleep(0.01)

    async def deliver(self, raw: bytes | str | Message, to: str | Iterable[str],
                      sender: str = "") -> None:
        await self.stack.adeliver(raw, to, sender)

    async def reset(self) -> None:
        await asyncio.to_thread(self.stack.reset)
