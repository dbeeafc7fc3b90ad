"""Fixtures for testing the pytest plugin and MailStack: pytester, and the plugin's own."""

from __future__ import annotations

import importlib.metadata
import os
import smtplib
from collections.abc import Iterator

import pytest

from mailstack.testing import MailStack
from mailstack.testing.launcher import PACKAGE_ROOT

pytest_plugins = ["pytester"]

PLUGIN = "mailstack.testing.plugin"


def plugin_args() -> list[str]:
    """``-p mailstack.testing.plugin`` unless the pytest11 entry point already loads it."""
    installed = any(ep.value == PLUGIN
                    for ep in importlib.metadata.entry_points(group="pytest11"))
    return [] if installed else ["-p", PLUGIN]


@pytest.fixture
def plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated test runs import this checkout's mailstack."""
    monkeypatch.setenv("PYTHONPATH", PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture(scope="module")
def stack() -> Iterator[MailStack]:
    with MailStack() as s:
        yield s


def rcpt_code(stack: MailStack, rcpt: str) -> int:
    """The reply code ``stack``'s port 25 gives to ``RCPT TO:<rcpt>`` (after EHLO and MAIL)."""
    with smtplib.SMTP(stack.host, stack.ports["smtp"], timeout=10) as s:
        s.ehlo()
        s.mail("app@example.test")
        return s.rcpt(rcpt)[0]
