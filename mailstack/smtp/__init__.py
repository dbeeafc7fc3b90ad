"""SMTP pieces shared by the mta and the mda: addresses, commands, DATA, replies, names."""
