"""Run the real mail stack in other people's tests: :class:`MailStack` (``with``),
:class:`AsyncMailStack` (``async with``) and a pytest plugin (:mod:`.plugin`)."""

from .stack import AsyncMailStack, MailStack, MailStackError, User

__all__ = ["AsyncMailStack", "MailStack", "MailStackError", "User"]
