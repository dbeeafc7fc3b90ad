"""The mta daemon: SMTP listeners (smtp 25, submission 587, submissions 465) + queue runner.

SIGUSR1 (sent by ``mailstack queue flush``) makes the runner retry every entry now; SIGUSR2 (sent
after ``queue delete``, ``sendmail``, a JMAP submission or a vacation reply changed the queue on
disk) makes it pick up the change without moving any other entry's next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import weakref
from typing import Any

from ..accounts.authlimit import AuthThrottle
from ..accounts.capture import ensure_capture_account
from ..accounts.users import UserDB
from ..config import Config
from ..runtime.netserver import format_sockname, limiter_for, proxy_policy, start_server
from ..runtime.tls import ensure_tls_files, server_context
from ..smtp.factory import ProtocolFactory
from .handler import MTAHandler
from .queue import Spool
from .relay import Relay
from .runner import STOP_DRAIN, QueueRunner
from .smtp import ErrorLimits, MailstackSMTP

log = logging.getLogger("mailstack.mta")


def pid_file(cfg: Config) -> Any:
    return cfg.data_dir / "run" / "mta.pid"


async def serve(cfg: Config, stop: asyncio.Event) -> None:
    files = ensure_tls_files(cfg)
    tls = server_context(files)
    await asyncio.to_thread(ensure_capture_account, cfg)
    spool = Spool(cfg.data_dir / "queue")
    relay = Relay(cfg)
    runner = QueueRunner(cfg, spool, remote=relay.deliver)
    await runner.load()
    throttle = AuthThrottle.for_config(cfg)
    handler = MTAHandler(cfg, UserDB(cfg.data_dir / "users"), spool, runner, throttle)

    limiter = limiter_for(cfg)
    errors = ErrorLimits(cfg.mta.soft_error_limit, cfg.mta.hard_error_limit,
                         float(cfg.mta.error_delay))

    sessions: weakref.WeakSet[MailstackSMTP] = weakref.WeakSet()

    def factory(listener: str) -> Any:
        implicit = listener == "submissions"

        def build() -> MailstackSMTP:
            proto = MailstackSMTP(
                handler, listener=listener, error_limits=errors, hostname=cfg.server.hostname,
                ident="mailstack ESMTP", data_size_limit=int(cfg.mta.max_message_size),
                enable_SMTPUTF8=True, decode_data=False,
                tls_context=None if implicit else tls,
                require_starttls=listener == "submission",
                auth_required=listener != "smtp", auth_require_tls=not implicit,
                auth_exclude_mechanism=[], timeout=float(cfg.mta.idle_timeout))
            proto.limiter = limiter
            proto.listener_name = f"mta {listener}"
            proto.handshake_timeout = float(cfg.server.tls_handshake_timeout)
            proto.proxy = proxy_policy(cfg, listener)
            if implicit:
                proto.implicit_tls = tls
            return proto

        copies = ProtocolFactory(build)  # aiosmtpd's constructor introspects: once, not per client

        def make() -> MailstackSMTP:
            proto = copies()
            sessions.add(proto)
            return proto
        return make

    # SIGUSR1 is handled before any listener accepts: whoever sees a port answer (a test
    # stack's reset(), `queue flush` after start) may signal at once; its default kills
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGUSR1, _flush, runner)
        loop.add_signal_handler(signal.SIGUSR2, _rescan, runner)
    servers: list[asyncio.Server] = []
    for listener, mode in (("smtp", "STARTTLS"), ("submission", "STARTTLS required"),
                           ("submissions", "implicit TLS")):
        port = cfg.port("mta", listener)
        if not port:
            continue
        try:
            new = await start_server(None, cfg.server.bind, port, name=f"mta {listener}",
                                     protocol_factory=factory(listener))
        except BaseException:
            for s in servers:
                s.close()
            raise
        servers += new
        for srv in new:
            for sock in srv.sockets:
                log.info("listening on %s (%s, %s)", format_sockname(sock.getsockname()),
                         listener, mode)

    pidf = pid_file(cfg)
    pidf.parent.mkdir(parents=True, exist_ok=True)
    pidf.write_text(f"{os.getpid()}\n")
    run_task = asyncio.create_task(runner.run(stop))
    await stop.wait()
    for srv in servers:
        srv.close()
    # open sessions: 421 to each (after a message being queued got its 250), then closed;
    # meanwhile the runner lets deliveries in flight finish (both within STOP_DRAIN)
    await asyncio.gather(run_task, *(s.shut_down(STOP_DRAIN) for s in list(sessions)))
    await asyncio.sleep(0)  # let the closed transports flush their 421
    await relay.close()
    spool.close()
    throttle.close()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.remove_signal_handler(signal.SIGUSR1)
        loop.remove_signal_handler(signal.SIGUSR2)
    with contextlib.suppress(OSError):
        if pidf.read_text().strip() == str(os.getpid()):
            pidf.unlink()


def _rescan(runner: QueueRunner) -> None:
    log.debug("queue changed on disk: rescanning")
    runner.rescan()


def _flush(runner: QueueRunner) -> None:
    log.info("flush requested: retrying every queued message now")
    runner.flush()




