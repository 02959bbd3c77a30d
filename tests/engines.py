"""Which test files run on which storage engine (issue 17, point 6: "CI runs every
storage-dependent test against both engines"). The one place that says it: every tests/test_*.py
is in exactly one of the four lists below, tests/test_engines.py fails while one is in none (a new
test file cannot skip PostgreSQL silently), and the PostgreSQL run reads BOTH_ENGINES:

    MAIL2TICKET_TEST_ENGINE=postgresql python -m pytest          # BOTH_ENGINES, on every core

(the whole suite with that variable collects only BOTH_ENGINES: conftest.py pytest_ignore_collect;
named files run as named, on PostgreSQL). .ci/run runs the whole suite on SQLite, then that line.

- BOTH_ENGINES: the files whose tests open mail2ticket's store (poll, ingest, import, tickets,
  outbox, the daemon, SLA, rules, search, status, hooks, quarantine, attachments...). Their
  database comes from tests/helpers (write_config, Desk, open_store, rows, connect), so it is
  m2t.db on SQLite and a database of their own on PostgreSQL; in the PostgreSQL run a test that
  still makes a SQLite database fails (conftest.py), so "passes on PostgreSQL" means it ran there.
  A test about the SQLite file itself is marked ``@pytest.mark.sqlite_only("why")`` and skipped
  on PostgreSQL. Ordered by what matters most for "nothing lost, nothing twice".
- POSTGRESQL_OUTSIDE_CI: storage-dependent files that pass on PostgreSQL but are not in CI's
  PostgreSQL run (its time budget), each with its cost.
- SQLITE_ONLY: files that use the store but only on SQLite, each with its reason.
- NOT_YET_ON_POSTGRESQL: storage-dependent, to be moved to BOTH_ENGINES (what is left, for each).
- POSTGRESQL_ITSELF: files that start PostgreSQL themselves in every run (the ``pg_url`` and
  ``postgres_server`` fixtures): the engine's own tests, search, db copy, several daemons.
- STORAGE_FREE: files that never open the store (parser, config, compose, CLI help, install,
  docs, the test servers); tests/test_engines.py checks they use none of the store's helpers.
"""

from __future__ import annotations

import sys

BOTH_ENGINES: tuple[str, ...] = (
    # storing exactly once: the import, the ledger, crashes and faults
    "test_poll.py",
    "test_exactly_once.py",
    "test_batch_durability.py",
    "test_ledger.py",
    "test_store.py",
    "test_batch_lookups.py",
    "test_network_faults.py",
    "test_server_faults.py",
    "test_uidvalidity.py",
    "test_disk_full.py",
    "test_daemon.py",
    "test_ingest.py",
    "test_big_messages.py",
    "test_object_storage.py",
    "test_quarantine.py",
    "test_quarantine_discard.py",
    "test_after_import.py",
    "test_provider_quirks.py",
    # sending once: the outbox, replies, acknowledgements, loops
    "test_outbox.py",
    "test_reply.py",
    "test_smtp.py",
    "test_ack_limits.py",
    "test_autoreply_policy.py",
    "test_dmarc.py",
    "test_threading.py",
    "test_sender_and_date.py",
    # triage, hooks, monitoring, metrics
    "test_tickets_cli.py",
    "test_search.py",
    "test_search_and_status_counts.py",
    "test_rules.py",
    "test_monitoring_tickets.py",
    "test_machine_output.py",
    "test_exit_codes.py",
    "test_parse_fidelity.py",
    # accounts and the command line around the store
    "test_accounts_remove.py",
    "test_account_display.py",
    "test_service_user.py",
    "test_config_check.py",
    # the rest: outside CI's PostgreSQL run until .ci/run was measured at 7 min 46 s on a fresh
    # clone without them (2026-12-02); the least important for "nothing lost, nothing twice"
    "test_maildir.py",
    "test_push_scale.py",
    "test_big_local_paths.py",
    "test_typos.py",
    "test_secrets_canary.py",
    "test_acknowledge.py",
    "test_narrow_terminal.py",
    "test_diagnostics.py",
    "test_hooks.py",
    "test_sla.py",
    "test_loops.py",
    "test_bounces.py",
    "test_editor_and_ids.py",
    "test_hints.py",
    "test_oauth.py",
    "test_tls_matrix.py",
    "test_secrets.py",
    "test_hijack.py",
    "test_metrics.py",
    "test_hostile_input.py",
    "test_old_mail.py",
    "test_pipeline.py",
    "test_rule_limits.py",
    "test_accounts_cli.py",
    "test_limits.py",
    "test_reparse.py",
)

# Storage-dependent files that pass on PostgreSQL (run them by name, or all with
# `python -m tests.engines all`) but are left out of CI's PostgreSQL run to keep `.ci/run` within
# its 13 minutes on two cores, each with its cost. None now: every one fits.
POSTGRESQL_OUTSIDE_CI: dict[str, str] = {}

SQLITE_ONLY: dict[str, str] = {
    "test_demo.py": "the demo (examples/demo) is a SQLite installation by design",
    "test_file_modes.py": "the modes of the SQLite file, its WAL and SHM (PostgreSQL's files are the server's)",
}

# Storage-dependent files not on PostgreSQL yet: their own config names a SQLite file (or they
# read one with sqlite3). Give them their database with tests/helpers (storage_toml,
# engine_storage, rows, connect), check them with MAIL2TICKET_TEST_ENGINE=postgresql, then move
# them to BOTH_ENGINES. Each with what is left to do.
NOT_YET_ON_POSTGRESQL: dict[str, str] = {
}

POSTGRESQL_ITSELF: dict[str, str] = {
    "test_pg_engine.py": "the engine: the test server, the dialect, the schema of both engines, the password chain",
    "test_daemons_shared.py": "several daemons on one PostgreSQL database (leases, takeover)",
    "test_kill_shared.py": "SIGKILLed daemons sharing one PostgreSQL database",
    "test_outbox_shared.py": "several processes and daemons sending one outbox on PostgreSQL",
    "test_search_postgresql.py": "PostgreSQL's full-text index and its upgrade",
    "test_search_query.py": "the FTS5 query syntax read without FTS5, compared on SQLite and PostgreSQL",
    "test_attachments_in_database.py": "attachments in the PostgreSQL table attachment_blobs",
    "test_db_copy.py": "db copy: a SQLite database moved to PostgreSQL",
    "test_leases.py": "leases on both engines in every run (its connect fixture's two params)",
}

STORAGE_FREE: dict[str, str] = {
    "test_architecture.py": "the import contracts and the README's module table",
    "test_docs.py": "help texts and the docs",
    "test_plain_tables.py": "tables as printed when piped",
    "test_engines.py": "these lists",
    "test_install.py": "./install and .ci/install-test-deps with a fake system",
    "test_servers.py": "the test servers (Dovecot, SMTP, the relay)",
    "test_catalogue.py": "the failure catalogue names tests that exist",
    "test_config.py": "loading and checking the config file",
    "test_schedules.py": "schedules and periods",
    "test_providers.py": "provider presets and add-account's steps",
    "test_monitoring.py": "monitoring mail recognised by the parser, [monitoring] checked",
    "test_fetch_reader.py": "reading IMAP FETCH answers",
    "test_corpus.py": "the parser over the real-world corpus",
    "test_parse_attachments.py": "the parser",
    "test_parse_autoreply.py": "the parser",
    "test_parse_bodies.py": "the parser",
    "test_parse_charsets.py": "the parser",
    "test_parse_cli.py": "'parse FILE', which uses no database",
    "test_parse_headers.py": "the parser",
    "test_parse_pathological.py": "the parser",
    "test_parse_properties.py": "the parser",
}


def postgresql_files(everything: bool = False) -> list[str]:
    """The files of CI's PostgreSQL run (with ``everything``, also POSTGRESQL_OUTSIDE_CI), as paths
    from the repository's root."""
    return [f"tests/{name}" for name in (*BOTH_ENGINES, *(POSTGRESQL_OUTSIDE_CI if everything else ()))]


if __name__ == "__main__":  # python -m tests.engines [all]: the PostgreSQL run's files, one a line
    sys.stdout.write("".join(f"{path}\n" for path in postgresql_files(sys.argv[1:] == ["all"])))
