"""Mail coming in: IMAP polls, Maildir, push, the parser pipeline and the exactly-once importer."""
