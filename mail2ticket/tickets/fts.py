"""The full-text index of messages (SQLite FTS5) and the triggers that keep it in step: made by migrations."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mail2ticket.tickets import fts_pg
from mail2ticket.tickets.engine import engine_of

if TYPE_CHECKING:
    from sqlite_utils import Database
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlite_utils import Database


# The index follows sqlite-utils' naming (messages_fts, triggers messages_ai/_ad/_au), so
# 'sqlite-utils search DB messages QUERY' and Datasette's search box work on it as well.
FTS_TABLE = "messages_fts"


FTS_COLUMNS = ("subject", "from_name", "from_address", "body_text")


TRIGGERS = {
    "messages_ai": """
        create trigger messages_ai after insert on messages begin
          insert into messages_fts (rowid, subject, from_name, from_address, body_text)
          values (new.id, new.subject, new.from_name, new.from_address, new.body_text);
        end""",
    "messages_ad": """
        create trigger messages_ad after delete on messages begin
          insert into messages_fts (messages_fts, rowid, subject, from_name, from_address, body_text)
          values ('delete', old.id, old.subject, old.from_name, old.from_address, old.body_text);
        end""",
    # Only a change to an indexed column touches the index (status columns change often).
    "messages_au": """
        create trigger messages_au after update of subject, from_name, from_address, body_text
        on messages begin
          insert into messages_fts (messages_fts, rowid, subject, from_name, from_address, body_text)
          values ('delete', old.id, old.subject, old.from_name, old.from_address, old.body_text);
          insert into messages_fts (rowid, subject, from_name, from_address, body_text)
          values (new.id, new.subject, new.from_name, new.from_address, new.body_text);
        end""",
}


def install(db: Database) -> None:
    """Create the index (if missing) over every stored message, and its triggers."""
    if not db[FTS_TABLE].exists():
        db.execute(
            f"create virtual table {FTS_TABLE} using fts5 ({', '.join(FTS_COLUMNS)}, "
            "tokenize='unicode61 remove_diacritics 2', content=\"messages\", content_rowid='id')"
        )
        db.execute(f"insert into {FTS_TABLE} ({FTS_TABLE}, rank) values ('rank', ?)", [RANK])
        db.execute(f"insert into {FTS_TABLE} ({FTS_TABLE}) values ('rebuild')")
    ensure_triggers(db)


def ensure_triggers(db: Database) -> bool:
    """Recreate missing triggers (a table rebuild drops them) and re-index; True if it had to.
    (On PostgreSQL: its index's trigger, tickets/fts_pg.py.)"""
    if engine_of(db) == "postgresql":
        return fts_pg.ensure_triggers(db)
    existing = {r[0] for r in db.execute("select name from sqlite_master where type = 'trigger'")}
    missing = [name for name in TRIGGERS if name not in existing]
    if not missing:
        return False
    for name in missing:
        db.execute(TRIGGERS[name])
    db.execute(f"insert into {FTS_TABLE} ({FTS_TABLE}) values ('rebuild')")
    return True


# bm25 weights, in FTS_COLUMNS order: a word in the subject counts more than one in the body.
RANK = "bm25(10.0, 4.0, 2.0, 1.0)"
