"""An unavailable IPv6 bind address is skipped (README: `[server] bind`), the others are
served; where the host has IPv6, ``::1`` beside them serves a client over it."""

from __future__ import annotations

import asyncio
import poplib
import socket

from ..conftest import add_user, running

UNASSIGNED = "2001:db8::1"  # a documentation address (RFC 3849) no host has


def _login(host: str, port: int) -> bytes:
    pop = poplib.POP3(host, port, timeout=15)
    pop.user("alice@example.test")
    pop.pass_("secret")
    return pop.quit()


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


async def test_an_unavailable_ipv6_address_is_skipped(config_factory) -> None:
    hosts = ["127.0.0.1", UNASSIGNED] + (["::1"] if _has_ipv6_loopback() else [])
    cfg = config_factory("[server]\nbind = [" + ", ".join(f'"{h}"' for h in hosts) + "]\n")
    add_user(cfg, "alice@example.test")
    served = [h for h in hosts if h != UNASSIGNED]
    ready = [f"listening on {f'[{h}]' if ':' in h else h}:{cfg.port('pop3', k)} "
             for h in served for k in ("pop3", "pop3s")]
    async with running("pop3", cfg, ready=ready) as pop3:
        for host in served:
            reply = await asyncio.to_thread(_login, host, cfg.port("pop3", "pop3"))
            assert reply.startswith(b"+OK"), host
            await pop3.wait_log(f"ip={host} ")
        log = pop3.log()
    assert log.count(f"skipping {UNASSIGNED} (IPv6 not available here)") == 2, log
    assert f"[{UNASSIGNED}]" not in log
