"""The values of ticket fields that the config and the command line name: priorities, statuses, tags."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where needed: 'import mail2ticket.tickets.db' stays cheap
    pass


PRIORITIES = ("low", "normal", "high", "urgent")  # in rising order of urgency


STATUSES = ("open", "pending", "closed")


def normalise_tag(tag: str) -> str:
    """Tags are lower case words: spaces and commas are not part of a tag."""
    return "-".join(tag.strip().lower().replace(",", " ").split())
