"""Run the real mail stack in other people's tests: :class:`MailStack` (``with``),
:class:`AsyncMailStack` (``async with``) and a pytest plugin (:mod:`.plugin`).

The names are imported on first use, so loading the pytest plugin costs nothing in test
sessions that never ask for a stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .mailboxes import Attachment, MailMessage
    from .stack import AsyncMailStack, InjectedFault, MailStack, MailStackError, User

__all__ = ["AsyncMailStack", "Attachment", "InjectedFault", "MailMessage", "MailStack",
           "MailStackError", "User"]


def __getattr__(name: str) -> Any:
    if name in ("Attachment", "MailMessage"):
        from . import mailboxes

        return getattr(mailboxes, name)
    if name in __all__:
        from . import stack

        return getattr(stack, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
