"""Shared fixtures: configs on free loopback ports, users, and daemons run as production runs
them (:func:`running`: one process each, uvloop) or, where a test must reach inside, in the
test's own event loop (:func:`inproc_running`)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailstack.accounts.users import UserDB
from mailstack.config import Config, load
from mailstack.runtime.daemon import load_serve
from mailstack.runtime.testhooks import ORDERED_ENV
from mailstack.runtime.tls import client_context, ensure_tls_files
from mailstack.store.maildir import create_user_mailbox
from mailstack.testing.launcher import get_launcher
from mailstack.testing.ports import free_port

# Every daemon of the suite uses the mda's copy log, as on a production file system that
# keeps metadata in order (this project's test machine is an ext4 without a journal, where
# the mda would sync each copy on its own); tests/deploy/test_copy_log_fs.py checks the
# detection itself.
os.environ.setdefault(ORDERED_ENV, "1")

PORT_KEYS = {
    "mta": ("smtp", "submission", "submissions"),
    "mda": ("lmtp",),
    "imap": ("imap", "imaps"),
    "pop3": ("pop3", "pop3s"),
    "http": ("http", "https"),
}


def write_config(tmp_path: Path, extra: str = "", *, domains: tuple[str, ...] = ("example.test",),
                 hostname: str = "mail.example.test") -> Path:
    """A TOML config with every listener on its own free port and data under tmp_path.

    ``extra`` is TOML whose keys override or add to the generated ones, section by section.
    """
    sections: dict[str, dict[str, str]] = {"server": {
        "hostname": f'"{hostname}"',
        "domains": "[" + ", ".join(f'"{d}"' for d in domains) + "]",
        "data_dir": f'"{tmp_path / "data"}"', "bind": '["127.0.0.1"]'}}
    for section, keys in PORT_KEYS.items():
        sections[section] = {k: str(free_port()) for k in keys}
    sections["mta"].update(retry_initial='"1s"', retry_max='"2s"')
    sections["mda"]["copy_log_size"] = '"1MiB"'  # written full of zeros at the first start
    current = None
    for raw in extra.strip().splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, {})
        elif "=" in line and current:
            key, _, value = line.partition("=")
            sections[current][key.strip()] = value.strip()
    text = "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in body.items()) + "\n"
                   for name, body in sections.items())
    path = tmp_path / "mailstack.toml"
    path.write_text(text)
    return path


#: a second listener address (127.0.0.2) that the config treats as a network address: IMAP and
#: POP3 refuse plaintext passwords there, as on a real interface (runs unprivileged, offline)
NON_LOOPBACK = "127.0.0.2"
NON_LOOPBACK_EXTRA = ('[server]\nbind = ["127.0.0.1", "127.0.0.2"]\n'
                      'plaintext_login_networks = ["127.0.0.1/32"]\n')


@pytest.fixture(params=["uvloop", "asyncio"])
def daemon_loop(request: pytest.FixtureRequest) -> str:
    """Config TOML for each event loop a daemon can run on: for behaviour that depends on the
    loop's transports (STARTTLS, aborts, socket addresses), a test runs on both."""
    return f'[server]\nevent_loop = "{request.param}"\n'


@pytest.fixture
def config_factory(tmp_path: Path) -> Callable[..., Config]:
    def make(extra: str = "", **kw) -> Config:
        return load(write_config(tmp_path, extra, **kw), env={})
    return make


@pytest.fixture
def cfg(config_factory) -> Config:
    return config_factory()


def add_user(cfg: Config, address: str, password: str = "secret") -> str:
    UserDB(cfg.data_dir / "users").add(address, password)
    create_user_mailbox(cfg.data_dir, address.lower())
    return address.lower()


@pytest.fixture
def client_ssl(cfg: Config) -> ssl.SSLContext:
    files = ensure_tls_files(cfg)
    return client_context(files.ca)


async def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, w = await asyncio.open_connection(host, port)
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
            return
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.02)


LAUNCHER = os.environ.get("MAILSTACK_TEST_LAUNCHER", "fork")
TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Daemon:
    """A daemon process started by :func:`running`: its pid and its log (stdout and stderr)."""

    name: str
    cfg: Config
    pid: int
    log_path: Path
    exit_code: int | None = None

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""

    async def wait_log(self, text: str, timeout: float = 15.0, count: int = 1) -> str:
        """Wait until ``text`` appears ``count`` times in the log; returns the log."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            log = self.log()
            if log.count(text) >= count:
                return log
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{self.name}: no {text!r} (x{count}) in its log within "
                                     f"{timeout}s:\n{log}")
            await asyncio.sleep(0.02)

    async def wait_log_match(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Wait until the regular expression ``pattern`` matches somewhere in the log."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            m = re.search(pattern, self.log())
            if m:
                return m
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{self.name}: nothing matches {pattern!r} in its log "
                                     f"within {timeout}s:\n{self.log()}")
            await asyncio.sleep(0.02)

    def errors(self) -> list[str]:
        """Log lines at level ERROR or above."""
        return [line for line in self.log().splitlines()
                if re.search(r"\]: ?(ERROR|CRITICAL): | (ERROR|CRITICAL): ", line)]


def listener_addresses(name: str, cfg: Config) -> list[str]:
    """``host:port`` of every listener daemon ``name`` opens (as its ``listening on`` lines
    spell them)."""
    binds = cfg.mda.bind if name == "mda" else cfg.server.bind
    name = "http" if name == "autoconfig" else name  # the http daemon's old name
    out = []
    for key in PORT_KEYS[name]:
        port = cfg.port(name, key)
        if port:
            out += [f"[{h}]:{port}" if ":" in h else f"{h}:{port}" for h in binds]
    return out


def _config_file_matches(cfg: Config) -> bool:
    try:
        return load(cfg.source, port_offset=cfg.port_offset, env={}) == cfg
    except Exception:
        return False


_log_counter = itertools.count()


@contextlib.asynccontextmanager
async def running(name: str, cfg: Config, *, env: Mapping[str, str] | None = None,
                  ready: Sequence[str] | None = None, expect_exit: int | None = 0,
                  allow_tracebacks: bool = False,
                  launcher: str | None = None) -> AsyncIterator[Daemon]:
    """Run daemon ``name`` the way production does: its own process running
    ``mailstack serve NAME --config FILE`` (uvloop unless ``[server] event_loop = "asyncio"``),
    forked from the warm fork server (``MAILSTACK_TEST_LAUNCHER=subprocess``: a fresh
    ``python -m mailstack`` per daemon).

    Ready when the log shows a ``listening on`` line for every listener (no probe
    connections), or every text in ``ready``. At the end: SIGTERM, and the exit code must be
    ``expect_exit`` (None: any) and the log free of tracebacks unless ``allow_tracebacks``.
    ``env`` adds variables to the daemon's environment (e.g. ``MAILSTACK_TEST_DISK_FULL``).
    """
    if not _config_file_matches(cfg):
        raise ValueError(f"running({name!r}) starts the daemon from {cfg.source}, which does not "
                         "say what this Config says: write the settings into the file "
                         "(config_factory(extra)), or use inproc_running()")
    logs = cfg.data_dir.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}-{next(_log_counter)}.log"
    kind = launcher or LAUNCHER
    lnch = get_launcher(kind)
    env = {ORDERED_ENV: os.environ.get(ORDERED_ENV, ""), **(env or {})}  # launchers drop it
    pid = await asyncio.to_thread(lnch.spawn, name, Path(cfg.source), log_path, env)
    daemon = Daemon(name, cfg, pid, log_path)
    wanted = list(ready) if ready is not None else \
        [f"listening on {a} " for a in listener_addresses(name, cfg)]
    try:
        deadline = time.monotonic() + 30
        while True:
            log = daemon.log()
            if all(w in log for w in wanted):
                break
            dead = await asyncio.to_thread(lnch.exited, [pid])
            if dead:
                daemon.exit_code = dead[pid]
                raise AssertionError(f"{name} exited ({dead[pid]}) before it was ready:\n{log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} was not ready within 30s (waiting for "
                                     f"{wanted}):\n{log}")
            await asyncio.sleep(0.005)
        yield daemon
    finally:
        codes = await asyncio.to_thread(lnch.stop, [pid], 10.0)
        if daemon.exit_code is None:
            daemon.exit_code = codes.get(pid)
    if expect_exit is not None and daemon.exit_code != expect_exit:
        raise AssertionError(f"{name} exited with {daemon.exit_code}, expected {expect_exit}:\n"
                             f"{daemon.log()}")
    if not allow_tracebacks and TRACEBACK in daemon.log():
        raise AssertionError(f"{name} logged a traceback:\n{daemon.log()}")


@contextlib.asynccontextmanager
async def inproc_running(name: str, cfg: Config) -> AsyncIterator[None]:
    """Run daemon ``name`` inside this test's event loop (plain asyncio, one process): only for
    tests that must reach inside the daemon (caplog, a Config that is not in a file)."""
    stop = asyncio.Event()
    task = asyncio.create_task(load_serve(name)(cfg, stop))
    try:
        first = PORT_KEYS["http" if name == "autoconfig" else name][0]
        port = cfg.port(name, first)
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{name} did not open port {port}")
            if task.done():
                task.result()  # raise the start-up error
                raise RuntimeError(f"{name} exited early")
            try:
                await wait_port(port, timeout=0.2)
                break
            except OSError:
                continue
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


# -- the suite's own guards (CI runs the README's `pytest -q`) --------------------------------
#: a full run must collect at least this many tests (a bit below the real count): a module
#: that silently collects nothing, or a broken conftest, fails the run instead of shrinking it
MIN_COLLECTED = 1_050
TESTS_ROOT = Path(__file__).resolve().parent


def _whole_suite(config: pytest.Config) -> bool:
    """The run was asked for every test (no paths below tests/, no -k/-m/--deselect)."""
    opt = config.option
    if opt.keyword or opt.markexpr or getattr(opt, "deselect", None) \
            or getattr(opt, "lf", False):
        return False
    paths = [Path(str(a).split("::")[0]).resolve() for a in config.args]
    return all(p in (TESTS_ROOT, TESTS_ROOT.parent) for p in paths)


def pytest_collection_finish(session: pytest.Session) -> None:
    if not _whole_suite(session.config) or session.config.option.collectonly:
        return
    n = len(session.items)
    found = {Path(str(item.path)).resolve() for item in session.items}
    empty = sorted(str(p.relative_to(TESTS_ROOT)) for p in TESTS_ROOT.rglob("test_*.py")
                   if p not in found)
    if n < MIN_COLLECTED or empty:
        pytest.exit(f"the suite collected {n} tests (at least {MIN_COLLECTED} expected); "
                    f"modules without tests: {', '.join(empty) or 'none'}", returncode=1)


def _excused(report: pytest.TestReport) -> bool:
    """The docker end-to-end test's skip when .ci/run tried and could not start an engine
    (it then sets ``MAILSTACK_DOCKER_UNAVAILABLE`` to the reason)."""
    from .deploy.test_docker import UNAVAILABLE

    return bool(os.environ.get("MAILSTACK_DOCKER_UNAVAILABLE")) and UNAVAILABLE in str(
        report.longrepr)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """``MAILSTACK_TEST_MAX_SKIPS=N`` (.ci/run sets 0): more skips than that fail the run, not
    counting the docker test's skip where no Docker engine could start (see _excused)."""
    limit = os.environ.get("MAILSTACK_TEST_MAX_SKIPS", "")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if not limit or reporter is None:
        return
    skipped = len([r for r in reporter.stats.get("skipped", []) if not _excused(r)])
    if skipped > int(limit) and session.exitstatus == 0:
        reporter.write_line(f"{skipped} tests skipped, MAILSTACK_TEST_MAX_SKIPS={limit}: "
                            "failing the run", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
