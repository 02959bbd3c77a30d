"""The database and everything that changes a ticket: schema, threading, rules, SLAs, search."""
