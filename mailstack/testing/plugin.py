"""pytest plugin (entry point ``pytest11``): a real mail stack as fixtures.

Fixtures (all hand out :class:`~mailstack.testing.MailStack` objects):

- ``mailstack``: a running stack, emptied (:meth:`~MailStack.reset`) before the test. By
  default one stack per distinct set of options is started per session (per xdist worker) and
  reused; ``--mailstack-scope=function`` (or ini ``mailstack_scope = function``) starts a fresh
  stack for every test instead. Options come from the marker
  ``@pytest.mark.mailstack(capture=True, domains=[...], extra_config=...)`` (markers on the
  module, class and function merge key by key, the closest winning); its ``faults=[...]``
  become runtime faults of the shared stack for this test (no stack of their own).
- ``mailstack_capture``: the same in capture mode (any address, nothing relayed).
- ``mailstack_user``: a fresh account ``user@<first domain>`` on ``mailstack`` (a ``User`` with
  ``.address`` and ``.password``).
- ``mailstack_factory``: ``mailstack_factory(**options)`` starts an extra stack for this test.
- ``amailstack``: ``mailstack`` wrapped as an :class:`~mailstack.testing.AsyncMailStack`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # imported when a fixture runs: sessions without stacks pay nothing
    from .stack import AsyncMailStack, MailStack, User

FIXTURES = ("mailstack", "mailstack_capture", "mailstack_user", "mailstack_factory",
            "amailstack")

MARKER = ("mailstack(**options): options for the mailstack fixture's stack, e.g. "
          "capture=True, relay=True, domains=['example.test'], extra_config={...}, and runtime "
          "faults for this test: faults=[{'at': 'smtp.rcpt', 'match': '*@fail.test', "
          "'reply': '451 4.3.0 try later', 'times': 1}]")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mailstack", "real mail stack fixtures")
    group.addoption("--mailstack-scope", choices=("session", "function"), default=None,
                    help="session: one stack per option set, reset before each test (default); "
                         "function: a new stack for every test")
    group.addoption("--mailstack-launcher", choices=("fork", "subprocess"), default=None,
                    help="fork: daemons forked from a warm fork server (default); subprocess: "
                         "`python -m mailstack serve` per daemon")
    parser.addini("mailstack_scope", "session or function (see --mailstack-scope)",
                  default="session")
    parser.addini("mailstack_launcher", "fork or subprocess (see --mailstack-launcher)",
                  default="fork")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                   items: list[pytest.Item]) -> None:
    """Start the fork server in the background as soon as a collected test needs a stack,
    so its imports overlap with the rest of the start-up."""
    if _setting(config, "launcher") != "fork":
        return
    if any(set(FIXTURES) & set(getattr(item, "fixturenames", ())) for item in items):
        from .launcher import get_launcher

        launcher = get_launcher("fork")
        prestart = getattr(launcher, "prestart", None)
        if prestart is not None:
            prestart()


def _setting(config: pytest.Config, name: str) -> str:
    return str(config.getoption(f"--mailstack-{name}") or config.getini(f"mailstack_{name}"))


class StackPool:
    """The session's stacks, one per distinct option set; stopped at the end of the session."""

    def __init__(self, launcher: str) -> None:
        self.launcher = launcher
        self.stacks: dict[str, MailStack] = {}

    def get(self, options: dict[str, Any]) -> MailStack:
        key = json.dumps(options, sort_keys=True, default=str)
        stack = self.stacks.get(key)
        if stack is not None and not stack.alive():  # a daemon died in an earlier test
            stack.close()
            stack = None
        if stack is None:
            from .stack import MailStack

            stack = MailStack(launcher=self.launcher, **options).start()
            self.stacks[key] = stack
        return stack

    def close(self) -> None:
        for stack in self.stacks.values():
            stack.close()
        self.stacks.clear()


def _options(request: pytest.FixtureRequest,
             **forced: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The stack options of the test's ``mailstack`` markers, the closest winning key by key
    (``extra_config`` tables merge key by key too), and their ``faults`` (all of them)."""
    from .stack import config_dict, merge_config

    options: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    faults: list[dict[str, Any]] = []
    for marker in reversed(list(request.node.iter_markers("mailstack"))):  # farthest first
        for key, value in marker.kwargs.items():
            if key == "extra_config":
                merge_config(extra, config_dict(value))
            elif key == "faults":
                faults += [dict(f) for f in value]
            else:
                options[key] = value
    if extra:
        options["extra_config"] = extra
    options.update(forced)
    return options, faults


@pytest.fixture(scope="session")
def mailstack_pool(pytestconfig: pytest.Config) -> Iterator[StackPool]:
    pool = StackPool(_setting(pytestconfig, "launcher"))
    yield pool
    pool.close()


def _stack(request: pytest.FixtureRequest, pool: StackPool,
           **forced: Any) -> Iterator[MailStack]:
    from .stack import MailStack

    options, faults = _options(request, **forced)
    if _setting(request.config, "scope") == "function":
        stack = MailStack(launcher=pool.launcher, **options).start()
        try:
            for fault in faults:
                stack._add_fault_spec(fault)
            yield stack
        finally:  # the daemons end and the directory goes while the next test runs
            stack.close(wait=False)
        return
    stack = pool.get(options)
    stack.reset()
    for fault in faults:  # runtime faults: the shared stack serves faulty tests too
        stack._add_fault_spec(fault)
    yield stack


@pytest.fixture
def mailstack(request: pytest.FixtureRequest, mailstack_pool: StackPool) -> Iterator[MailStack]:
    """A running mail stack (mta, mda, imap, pop3), empty at the start of the test."""
    yield from _stack(request, mailstack_pool)


@pytest.fixture
def mailstack_capture(request: pytest.FixtureRequest,
                      mailstack_pool: StackPool) -> Iterator[MailStack]:
    """A running stack in capture mode: mail for any address lands in ``capture_user``."""
    yield from _stack(request, mailstack_pool, capture=True)


@pytest.fixture
def mailstack_user(mailstack: MailStack) -> User:
    """A fresh account on ``mailstack``."""
    return mailstack.add_user(f"user@{mailstack.domains[0]}")


@pytest.fixture
def mailstack_factory(mailstack_pool: StackPool) -> Iterator[Callable[..., MailStack]]:
    """Start extra stacks in a test: ``mailstack_factory(capture=True)``; stopped after it."""
    from .stack import MailStack

    started: list[MailStack] = []

    def make(**options: Any) -> MailStack:
        stack = MailStack(launcher=mailstack_pool.launcher, **options).start()
        started.append(stack)
        return stack

    yield make
    for stack in started:
        stack.close()


@pytest.fixture
def amailstack(mailstack: MailStack) -> AsyncMailStack:
    """``mailstack`` for async tests: ``await amailstack.wait_for_message(...)``."""
    from .stack import AsyncMailStack

    return AsyncMailStack(mailstack)
