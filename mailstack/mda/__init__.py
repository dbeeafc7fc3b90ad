"""The mda: LMTP server delivering into Maildir."""
