"""Maildir storage shared by the mda, imap and pop3 daemons."""
