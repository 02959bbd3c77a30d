"""mail2ticket: turn IMAP mailboxes into a ticket queue in a local SQLite database."""

__version__ = "0.1.0"
