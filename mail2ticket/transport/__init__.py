"""Talking to mail servers: IMAP and SMTP over verified TLS."""
