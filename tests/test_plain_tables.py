"""Tables as printed when piped (cli/output.print_table): aligned columns, every cell one line,
wide characters counted twice, long cells cut, the same text whether a column takes the fast path
(all plain ASCII) or is measured cell by cell."""

from __future__ import annotations

import pytest

from mail2ticket.cli.output import MAX_PLAIN_CELL, print_table


@pytest.fixture
def piped(capsys):
    def show(rows, headers):
        print_table(rows, headers)
        return capsys.readouterr().out.splitlines()
    return show


def test_plain_columns_are_aligned_to_their_widest_cell(piped):
    lines = piped([["#1", "open", 3, None], ["#20", "closed", 12, "x"]], ["id", "status", "msgs", "tag"])
    assert lines == [
        "id   status  msgs  tag",
        "#1   open    3",
        "#20  closed  12    x",
    ]


def test_cells_that_need_it_are_folded_measured_and_cut(piped):
    long = "y" * (MAX_PLAIN_CELL + 30)
    lines = piped(
        [["#1", "two  spaces", "パスワード", long],
         ["#2", "a\nnew line", "ok", "short"],
         ["#3", " padded ", "für", "z"]],
        ["id", "subject", "name", "body"],
    )
    assert lines[0] == "id  subject     name        body"
    assert lines[1] == "#1  two spaces  パスワード  " + "y" * (MAX_PLAIN_CELL - 1) + "…"
    assert lines[2] == "#2  a new line  ok          short"
    assert lines[3] == "#3  padded      für         z"


def test_a_table_without_rows_prints_its_header(piped):
    assert piped([], ["id", "status"]) == ["id  status"]
