"""Accounts: the users file, the failed-login throttle, capture mode's account."""
