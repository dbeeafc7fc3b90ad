"""``mailstack`` command line: up, serve, user, queue, sendmail, config.

Every subcommand accepts ``--config FILE`` (default: ``$MAILSTACK_CONFIG`` or the embedded
defaults). Errors are one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import Config, ConfigError, load
from .runtime.fsutil import private_umask

#: daemons of which one process per data directory may run (`serve` takes a lock)
SINGLE_DAEMONS = frozenset({"mta"})

EPILOG = """\
examples:
  mailstack up                                  run every daemon on the default config
  mailstack up --port-offset 10000              same, with every port moved up by 10000
  mailstack up --capture                        accept mail for any address, relay none, keep
                                                it all in one account (read it over IMAP/POP3)
  echo secret | mailstack user add alice@localhost --password-stdin
  mailstack queue list                          what waits in the mta's queue
  mailstack sendmail -t < message.eml           submit a message like /usr/sbin/sendmail
"""


def _common(p: argparse.ArgumentParser, *, offset: bool = False) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="TOML config file (default: $MAILSTACK_CONFIG or built-in defaults)")
    if offset:
        p.add_argument("--port-offset", type=int, default=0, metavar="N",
                       help="add N to every port (non-root users, tests, two stacks side by side)")


def _capture(p: argparse.ArgumentParser) -> None:
    p.add_argument("--capture", action="store_true",
                   help="capture mode: accept mail for any recipient on any domain, relay none, "
                        "file every message in the [capture] account (default "
                        "capture@capture.test, password 'capture')")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailstack", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A real mail stack: SMTP (mta), LMTP delivery to Maildir (mda), IMAP, POP3.")
    parser.add_argument("--version", action="version", version=f"mailstack {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("up", help="run every daemon as a child process (Ctrl-C stops all)")
    _common(p, offset=True)
    _capture(p)

    p = sub.add_parser("serve", help="run one daemon in the foreground (docker-compose uses this)")
    p.add_argument("daemon", choices=["mta", "mda", "imap", "pop3", "http", "autoconfig"])
    _common(p, offset=True)
    _capture(p)

    p = sub.add_parser("user", help="manage accounts: add, del, passwd, list, token")
    usub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (("add", "create an account and its mailbox"),
                         ("del", "remove an account and revoke its app tokens (its mail stays"
                          " on disk)"),
                         ("passwd", "change an account's password")):
        q = usub.add_parser(action, help=text)
        q.add_argument("address")
        if action != "del":
            q.add_argument("--password-stdin", action="store_true",
                           help="read the password from the first line of standard input")
        _common(q)
    _common(usub.add_parser("list", help="list accounts"))
    q = usub.add_parser("token", help="print a new app token (HTTP Bearer auth, e.g. JMAP)")
    q.add_argument("address")
    q.add_argument("--revoke", action="store_true", help="remove every token of the account")
    _common(q)

    p = sub.add_parser("queue", help="inspect and manage the mta's queue (like mailq/postqueue)")
    qsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = qsub.add_parser("list", help="list queued messages and their recipients")
    q.add_argument("--json", action="store_true",
                   help="print the queue as JSON (a list of entries with their recipients)")
    _common(q)
    q = qsub.add_parser("show", help="print one queued message with its envelope")
    q.add_argument("id")
    _common(q)
    _common(qsub.add_parser("flush", help="retry every queued message now"))
    q = qsub.add_parser("delete", help="remove a message from the queue")
    q.add_argument("id")
    _common(q)

    p = sub.add_parser("sendmail", help="sendmail-compatible submission: message on stdin")
    p.add_argument("-t", dest="read_recipients", action="store_true",
                   help="take recipients from the To, Cc and Bcc headers")
    p.add_argument("-f", dest="sender", metavar="FROM", help="envelope sender")
    p.add_argument("-i", "-oi", dest="ignore_dots", action="store_true",
                   help="accepted for compatibility (a lone '.' never ends the message)")
    p.add_argument("recipients", nargs="*", metavar="RCPT")
    _common(p)

    p = sub.add_parser("init", help="prepare the data directory (folders, TLS files); "
                       "idempotent")
    _common(p)

    p = sub.add_parser("health", help="exit 0 when a daemon answers its greeting "
                       "(container health checks)")
    p.add_argument("daemon", choices=["mta", "mda", "imap", "pop3", "http", "autoconfig"])
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="try again every 50 ms for up to SECONDS until the daemon answers")
    _common(p, offset=True)

    p = sub.add_parser("config", help="validate a configuration")
    csub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    _common(csub.add_parser("check", help="parse and validate; print the effective settings"),
            offset=True)
    return parser


def _die(msg: str, code: int = 1) -> int:
    print(f"mailstack: {msg}", file=sys.stderr)
    return code


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        pw = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise ValueError("no terminal to ask for the password on: pipe it in with "
                             f"--password-stdin (echo PASSWORD | mailstack user {args.action} "
                             f"{args.address} --password-stdin)")
        try:
            pw = getpass.getpass("password: ")
            if getpass.getpass("again: ") != pw:
                raise ValueError("the passwords differ")
        except EOFError:
            raise ValueError("no password given (end of input)") from None
    if not pw:
        raise ValueError("empty password")
    return pw


def _stack_hint(cfg: Config) -> str:
    """How to point a command at the data directory it is using now, from anywhere."""
    if cfg.source != "<defaults>":
        return f"--config {Path(cfg.source).absolute()}"
    return f"MAILSTACK_DATA={cfg.data_dir}"


def _warn_new_data_dir(cfg: Config) -> None:
    """``user add`` with no config and no stack: say where the account goes before making a
    data directory nobody runs (the default is relative to the current directory)."""
    from .runtime.supervisor import data_dir_in_use

    if not cfg.data_dir.exists():
        print(f"mailstack: warning: {cfg.data_dir} does not exist: creating a new data "
              f"directory (from {cfg.source}). If your stack runs elsewhere, point at its data "
              "directory with --config FILE or MAILSTACK_DATA=DIR", file=sys.stderr)
    elif cfg.source == "<defaults>" and not data_dir_in_use(cfg):
        print(f"mailstack: warning: no mailstack runs on {cfg.data_dir} (built-in defaults, "
              "no --config): the account is added there; if your stack runs elsewhere, use "
              "--config FILE or MAILSTACK_DATA=DIR", file=sys.stderr)


def cmd_user(args: argparse.Namespace, cfg: Config) -> int:
    if args.action in ("add", "passwd"):
        # before asking for a password; a problem here is better found now than after it
        problems = [p for p in _check(cfg) if "data_dir" in p]
        if problems:
            return _die(problems[0])
    if args.action == "add":
        _warn_new_data_dir(cfg)
    from .accounts.users import UserDB, UserError
    from .store.maildir import create_user_mailbox

    db = UserDB(cfg.data_dir / "users")
    try:
        if args.action == "list":
            for addr in db.list():
                print(addr)
            return 0
        if args.action == "del":
            from .accounts.tokens import TokenDB
            from .accounts.users import normalize_address

            addr = normalize_address(args.address)
            if not db.exists(addr):
                raise UserError(f"no user {addr}")
            # tokens first: a later account at this address must not inherit them
            revoked = TokenDB(cfg.data_dir / "tokens").revoke(addr)
            db.delete(addr)
            print(f"deleted {addr} and revoked its {revoked} app token(s) (its mail stays "
                  f"in {cfg.data_dir / 'mail'})")
            return 0
        if args.action == "token":
            from .accounts.tokens import TokenDB
            from .accounts.users import normalize_address

            addr = normalize_address(args.address)
            tokens = TokenDB(cfg.data_dir / "tokens")
            if args.revoke:
                print(f"revoked {tokens.revoke(addr)} token(s) of {addr}")
                return 0
            if not db.exists(addr):
                return _die(f"no user {addr}; add it with `mailstack user add {addr}`")
            print(tokens.create(addr))
            return 0
        pw = _read_password(args)
        if args.action == "add":
            addr = db.add(args.address, pw)
            domain = addr.rpartition("@")[2]
            box = create_user_mailbox(cfg.data_dir, addr)
            print(f"added {addr} (mailbox {box.root})")
            if not cfg.is_local_domain(domain):
                print(f"warning: {domain} is not in [server].domains of {cfg.source}; "
                      "mail for it will not be accepted", file=sys.stderr)
        else:
            db.set_password(args.address, pw)
            print(f"password changed for {args.address.lower()}")
    except (UserError, ValueError) as exc:
        return _die(str(exc))
    except OSError as exc:
        return _die(f"cannot write to {cfg.data_dir}: {exc.strerror or exc} "
                    f"({exc.filename or cfg.data_dir}); run as the owner of the data "
                    "directory or fix its permissions")
    return 0


def _check(cfg: Config) -> list[str]:
    from .config import check_files

    return check_files(cfg)


def cmd_config(args: argparse.Namespace, cfg: Config) -> int:
    from .runtime.banner import listeners

    problems = _check(cfg)
    for problem in problems:
        print(f"mailstack: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(f"{cfg.source}: OK")
    print(f"  hostname  {cfg.server.hostname}")
    print(f"  domains   {', '.join(cfg.server.domains)}")
    print(f"  data_dir  {cfg.data_dir}")
    for lst in listeners(cfg):
        where = f"unix:{lst.path}" if lst.path else f"port {lst.port:<6}"
        print(f"  {lst.daemon:<10} {lst.name:<12} {where} {lst.tls}")
    if cfg.capture.enabled:
        print(f"  capture   every message goes to {cfg.capture.address}; nothing is relayed")
    for f in cfg.faults:
        what = ", ".join(x for x in (f"stall {float(f.stall):g}s" if f.stall else "",
                                     f.reply) if x) or "drop the connection"
        print(f"  fault     {f.match} at {f.at}: {what}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    private_umask()  # files and directories made by any subcommand are the owner's only
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # a file or directory the command needs: one line, no traceback
        where = f" ({exc.filename})" if exc.filename else ""
        return _die(f"{exc.strerror or exc}{where}; check the path and its permissions")


def _main(args: argparse.Namespace) -> int:
    try:
        cfg = load(args.config, port_offset=getattr(args, "port_offset", 0) or 0)
    except ConfigError as exc:
        return _die(str(exc), 2)
    if getattr(args, "capture", False):
        cfg = cfg.with_capture()
    if args.command == "up":
        from .runtime.supervisor import up
        return up(cfg)
    if args.command == "serve":
        from .runtime.daemon import run
        from .runtime.supervisor import DataDirBusy, lock_data_dir

        problems = _check(cfg)
        for problem in problems:
            print(f"mailstack: {problem}", file=sys.stderr)
        if problems:
            return 2
        try:
            # one mta per queue (its runner and run/mta.pid); imap, pop3 and the mda may run in
            # several processes on one data dir (the store is made for that)
            if args.daemon in SINGLE_DAEMONS:
                lock_data_dir(cfg, args.daemon)  # held until the process exits
        except DataDirBusy as exc:
            return _die(str(exc), 2)
        return run(args.daemon, cfg)
    if args.command == "user":
        return cmd_user(args, cfg)
    if args.command == "queue":
        from .mta.queuecli import main as queue_main
        return queue_main(args, cfg)
    if args.command == "sendmail":
        from .sendmail import main as sendmail_main
        return sendmail_main(args, cfg)
    if args.command == "config":
        return cmd_config(args, cfg)
    if args.command == "init":
        from .runtime.supervisor import prepare_data_dir
        try:
            files = prepare_data_dir(cfg)
        except OSError as exc:
            return _die(f"cannot prepare {cfg.data_dir}: {exc}")
        print(f"data directory {cfg.data_dir} ready" + (f"; CA certificate {files.ca}"
                                                         if files.ca else ""))
        return 0
    if args.command == "health":
        from .runtime.health import check
        ok, text = check(cfg, args.daemon, wait=max(0.0, args.wait))
        print(text, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    return _die(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
