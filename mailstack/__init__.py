"""mailstack: a real, networked mail stack (SMTP, LMTP, IMAP, POP3 over Maildir) in asyncio."""

__version__ = "0.2.0"
