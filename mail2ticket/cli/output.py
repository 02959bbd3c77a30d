"""Output for people and scripts: rich tables on a terminal, aligned text when piped, JSON."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table."
)


def is_tty() -> bool:
    return sys.stdout.isatty()


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def local_time(value: str | None) -> str:
    """ISO 8601 UTC -> local 'YYYY-MM-DD HH:MM' for people (terminal only)."""
    if not value:
        return ""
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return dt.astimezone().strftime("%Y-%m-%d %H:%M")


def shown_time(value: str | None) -> str:
    """A stored time as shown in a table: local on a terminal, ISO 8601 UTC when piped."""
    return local_time(value) if is_tty() else (value or "")


def print_csv(rows: Sequence[dict], columns: Sequence[str]) -> None:
    """CSV with a header row, for spreadsheets and scripts; lists are joined with spaces."""
    import csv

    out = sys.stdout
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        values = []
        for c in columns:
            v = row.get(c)
            if isinstance(v, list | tuple):
                v = " ".join(str(x) for x in v)
            elif isinstance(v, bool):
                v = "true" if v else "false"
            values.append("" if v is None else v)
        writer.writerow(values)


MAX_PLAIN_CELL = 120


def display_width(text: str) -> int:
    """Columns a string takes in a terminal: East Asian wide characters take two."""
    import unicodedata

    if text.isascii():
        return len(text)
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


def _pad(text: str, width: int) -> str:
    return text + " " * (width - display_width(text))


def _cell(value: Any) -> str:
    text = " ".join(("" if value is None else str(value)).split())
    return text if len(text) <= MAX_PLAIN_CELL else text[: MAX_PLAIN_CELL - 1] + "…"


def print_table(
    rows: Sequence[Sequence[Any]],
    headers: Sequence[str],
    *,
    title: str | None = None,
    styles: Sequence[str | None] | None = None,
    row_styles: Sequence[str | None] | None = None,
) -> None:
    """A rich table on a terminal; plain aligned columns (no colour, no truncation) when piped."""
    if is_tty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        console = Console(no_color=bool(os.environ.get("NO_COLOR")))
        table = Table(title=title, header_style="bold")
        for i, h in enumerate(headers):
            table.add_column(h, style=(styles[i] if styles else None), overflow="fold")
        for i, row in enumerate(rows):
            # Text, never markup: a subject such as "[ticket] a [/] b" is shown as it is.
            table.add_row(*[v if isinstance(v, Text) else Text("" if v is None else str(v)) for v in row],
                          style=row_styles[i] if row_styles else None)
        console.print(table)
        return
    text_rows = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], display_width(cell))
    click.echo("  ".join(_pad(h, widths[i]) for i, h in enumerate(headers)).rstrip())
    for row in text_rows:
        click.echo("  ".join(_pad(c, widths[i]) for i, c in enumerate(row)).rstrip())
