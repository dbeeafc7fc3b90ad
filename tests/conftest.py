"""Shared fixtures: configs on free loopback ports, users, and daemons run in the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from mailstack.config import Config, load
from mailstack.daemon import load_serve
from mailstack.store.maildir import create_user_mailbox
from mailstack.testing.ports import free_port
from mailstack.tls import client_context, ensure_tls_files
from mailstack.users import UserDB

PORT_KEYS = {
    "mta": ("smtp", "submission", "submissions"),
    "mda": ("lmtp",),
    "imap": ("imap", "imaps"),
    "pop3": ("pop3", "pop3s"),
    "autoconfig": ("http",),
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


@contextlib.asynccontextmanager
async def running(name: str, cfg: Config) -> AsyncIterator[None]:
    """Run daemon ``name`` in this event loop until the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(load_serve(name)(cfg, stop))
    try:
        first = PORT_KEYS[name][0]
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
