"""Capture mode's catch-all account: created (or given the configured password) at start-up so
IMAP/POP3 clients such as Thunderbird can read everything the mta captured."""

from __future__ import annotations

from ..config import Config
from ..store.maildir import create_user_mailbox
from .users import UserDB


def ensure_capture_account(cfg: Config) -> None:
    """Make the ``[capture] address`` account exist with ``[capture] password`` (capture mode,
    or ``[capture] outbound``)."""
    if not cfg.capture.active:
        return
    db = UserDB(cfg.data_dir / "users")
    addr = cfg.capture.address.lower()
    if not db.exists(addr):
        db.add(addr, cfg.capture.password)
    elif not db.check_password(addr, cfg.capture.password):
        db.set_password(addr, cfg.capture.password)
    create_user_mailbox(cfg.data_dir, addr)


def capture_banner(cfg: Config) -> list[str]:
    """Banner lines for ``mailstack up --capture``."""
    if not cfg.capture.enabled:
        return []
    return [f"  capture:   every message, for any address, goes to {cfg.capture.address} "
            f"(password: {cfg.capture.password}); nothing is relayed"]
