"""Command-line value types shared by several commands."""

from __future__ import annotations

import click


class TicketId(click.ParamType):
    """A ticket id as typed or as the tool prints it: 12 or #12."""

    name = "ID"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().lstrip("#")
        if not text.isdigit():
            self.fail(f"{value!r} is not a ticket id (a number such as 12 or #12)", param, ctx)
        return int(text)
