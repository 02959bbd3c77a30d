"""Command-line value types shared by several commands."""

from __future__ import annotations

import click


class TicketId(click.ParamType):
    """A ticket id as typed or as the tool prints it: 12 or #12. ``what`` names the kind of id
    in the error (ticket, quarantine entry, outbox entry)."""

    name = "ID"

    def __init__(self, what: str = "ticket"):
        self.what = what

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().lstrip("#")
        if not text.isdigit():
            self.fail(f"{value!r} is not a {self.what} id (a number such as 12 or #12)", param, ctx)
        return int(text)
