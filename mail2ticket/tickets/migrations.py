"""Schema migrations, applied in order every time the database is opened."""

from __future__ import annotations

import secrets

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from mail2ticket.tickets.fts import install
from mail2ticket.tickets.leases import TABLES as LEASE_TABLES

migrations = Migrations("mail2ticket")


@migrations()
def m001_initial(db: Database) -> None:
    db["tickets"].create(
        {
            "id": int,
            "account": str,
            "subject": str,
            "requester": str,
            "requester_name": str,
            "status": str,
            "priority": str,
            "assignee": str,
            "created_at": str,
            "updated_at": str,
            "closed_at": str,
            "first_response_at": str,
            "due_response_at": str,
            "due_resolution_at": str,
            "overdue": int,
        },
        pk="id",
        defaults={"status": "open", "priority": "normal", "overdue": 0},
        not_null={"account", "subject", "status", "priority", "created_at", "updated_at"},
    )
    db["raw_messages"].create(
        {"sha256": str, "size": int, "raw": bytes, "stored_at": str},
        pk="sha256",
        not_null={"size", "raw", "stored_at"},
    )
    db["messages"].create(
        {
            "id": int,
            "ticket_id": int,
            "direction": str,
            "account": str,
            "raw_sha256": str,
            "message_id": str,
            "in_reply_to": str,
            "refs": str,
            "subject": str,
            "from_address": str,
            "from_name": str,
            "to_addrs": str,
            "cc_addrs": str,
            "date": str,
            "received_at": str,
            "body_text": str,
            "body_html": str,
            "auto_reply": str,
            "defects": str,
            "thread_reason": str,
            "ack_reason": str,
        },
        pk="id",
        foreign_keys=[("ticket_id", "tickets", "id"), ("raw_sha256", "raw_messages", "sha256")],
        not_null={"ticket_id", "direction", "account", "received_at"},
    )
    db["attachments"].create(
        {
            "id": int,
            "message": int,
            "position": int,
            "filename": str,
            "original_filename": str,
            "content_type": str,
            "size": int,
            "sha256": str,
            "path": str,
            "content_id": str,
            "disposition": str,
        },
        pk="id",
        foreign_keys=[("message", "messages", "id")],
        not_null={"message", "position", "filename", "size", "sha256"},
    )
    db["quarantine"].create(
        {
            "id": int,
            "account": str,
            "folder": str,
            "uidvalidity": int,
            "uid": int,
            "raw_sha256": str,
            "size": int,
            "reason": str,
            "error": str,
            "created_at": str,
            "retries": int,
            "resolved_at": str,
            "resolved_message": int,
        },
        pk="id",
        foreign_keys=[("raw_sha256", "raw_messages", "sha256")],
        defaults={"retries": 0},
        not_null={"account", "reason", "error", "created_at"},
    )
    # The import ledger: one row per message seen in a mailbox, the key of exactly-once import.
    db["sources"].create(
        {
            "id": int,
            "account": str,
            "folder": str,
            "uidvalidity": int,
            "uid": int,
            "raw_sha256": str,
            "message": int,
            "quarantine": int,
            "imported_at": str,
            "action": str,
            "action_state": str,
        },
        pk="id",
        not_null={"account", "folder", "uidvalidity", "uid", "imported_at", "action_state"},
    )
    db["mailboxes"].create(
        {
            "account": str,
            "folder": str,
            "uidvalidity": int,
            "last_uid": int,
            "updated_at": str,
        },
        pk=("account", "folder"),
        defaults={"last_uid": 0},
    )
    db["account_status"].create(
        {
            "account": str,
            "last_poll_at": str,
            "last_result": str,
            "last_error": str,
            "last_success_at": str,
            "imported_total": int,
            "last_imported": int,
            "failures": int,
            "next_attempt_at": str,
        },
        pk="account",
        defaults={"imported_total": 0, "failures": 0, "last_imported": 0},
    )
    db["events"].create(
        {
            "id": int,
            "ticket_id": int,
            "account": str,
            "created_at": str,
            "kind": str,
            "actor": str,
            "detail": str,
        },
        pk="id",
        not_null={"created_at", "kind"},
    )
    db["tickets"].create_index(["status", "updated_at"], index_name="idx_tickets_status_updated")
    db["tickets"].create_index(["account", "status"], index_name="idx_tickets_account_status")
    db["tickets"].create_index(["requester"], index_name="idx_tickets_requester")
    db["messages"].create_index(["ticket_id", "id"], index_name="idx_messages_ticket")
    db["messages"].create_index(["message_id"], index_name="idx_messages_message_id")
    db["messages"].create_index(["raw_sha256"], index_name="idx_messages_raw_sha256")
    db["attachments"].create_index(["message"], index_name="idx_attachments_message")
    db["sources"].create_index(
        ["account", "folder", "uidvalidity", "uid"], unique=True, index_name="idx_sources_identity"
    )
    db["sources"].create_index(["raw_sha256"], index_name="idx_sources_raw")
    db["sources"].create_index(
        ["account", "folder", "action_state"], index_name="idx_sources_pending"
    )
    db["quarantine"].create_index(["resolved_at"], index_name="idx_quarantine_open")
    db["events"].create_index(["ticket_id", "id"], index_name="idx_events_ticket")


@migrations()
def m101_outbox(db: Database) -> None:
    """Issue 5: the outbox of mails to send, and the secret that signs our Message-IDs."""

    db["outbox"].create(
        {
            "id": int,
            "ticket_id": int,
            "message": int,  # the messages row of a reply; null for acknowledgements and notices
            "account": str,
            "kind": str,  # ack | reply | close | reopen
            "mail_from": str,
            "recipients": str,  # JSON list: the envelope recipients
            "to_address": str,  # the main recipient, for the per-sender rate limit
            "message_id": str,
            "subject": str,
            "raw_sha256": str,
            "status": str,  # queued | sending | sent | failed
            "attempts": int,
            "created_at": str,
            "next_attempt_at": str,
            "claimed_by": str,  # host:pid of the sender that is sending it now
            "claimed_at": str,
            "sent_at": str,
            "last_error": str,
            "smtp_reply": str,
        },
        pk="id",
        foreign_keys=[("ticket_id", "tickets", "id"), ("raw_sha256", "raw_messages", "sha256")],
        defaults={"status": "queued", "attempts": 0},
        not_null={"account", "kind", "mail_from", "recipients", "message_id", "raw_sha256", "status",
                  "created_at"},
    )
    db["outbox"].create_index(["status", "next_attempt_at"], index_name="idx_outbox_due")
    db["outbox"].create_index(["to_address", "kind", "created_at"], index_name="idx_outbox_rate")
    db["outbox"].create_index(["message_id"], index_name="idx_outbox_message_id")
    db["conversation_state"].create({"key": str, "value": str}, pk="key", not_null={"value"})
    db["conversation_state"].insert({"key": "message_id_secret", "value": secrets.token_hex(32)})


@migrations()
def m301_triage(db: Database) -> None:
    # Issue 7: tags, the SLA breach record, and the indexes behind 'tickets list' filters and sorts.
    db["ticket_tags"].create(
        {"ticket_id": int, "tag": str},
        pk=("ticket_id", "tag"),
        foreign_keys=[("ticket_id", "tickets", "id")],
        not_null={"tag"},
    )
    db["ticket_tags"].create_index(["tag", "ticket_id"], index_name="idx_ticket_tags_tag")
    # When each SLA target was first found passed: the overdue event is recorded once per breach.
    db["tickets"].add_column("response_breached_at", str)
    db["tickets"].add_column("resolution_breached_at", str)
    db["tickets"].create_index(["updated_at"], index_name="idx_tickets_updated")
    db["tickets"].create_index(["created_at"], index_name="idx_tickets_created")
    db["tickets"].create_index(["priority", "updated_at"], index_name="idx_tickets_priority_updated")
    db["tickets"].create_index(["assignee", "updated_at"], index_name="idx_tickets_assignee_updated")
    db["tickets"].create_index(["account", "updated_at"], index_name="idx_tickets_account_updated")
    # Partial indexes: only the few tickets that the overdue check and 'list --overdue' look at.
    db.execute(
        "create index idx_tickets_overdue on tickets (updated_at) where overdue = 1"
    )
    db.execute(
        "create index idx_tickets_due_response on tickets (due_response_at) "
        "where status != 'closed' and first_response_at is null"
    )
    db.execute(
        "create index idx_tickets_due_resolution on tickets (due_resolution_at) where status != 'closed'"
    )


@migrations()
def m301_search(db: Database) -> None:
    # Full-text search (messages_fts, FTS5) over every message already stored, and the triggers
    # that keep it in sync with each insert, update and delete (mail2ticket/tickets/search.py).

    install(db)


@migrations()
def m301_views(db: Database) -> None:
    # Views for reading the database without our code (sqlite3, Datasette): docs/triage.md.
    db.execute(
        """
        create view ticket_list as
        select t.id, t.status, t.priority, t.account, t.requester, t.requester_name, t.assignee,
               t.subject, t.created_at, t.updated_at, t.closed_at, t.first_response_at,
               t.due_response_at, t.due_resolution_at,
               (t.overdue = 1 and t.status != 'closed') as overdue,
               (select group_concat(g.tag, ' ') from ticket_tags g where g.ticket_id = t.id) as tags,
               (select count(*) from messages m where m.ticket_id = t.id) as message_count,
               (select count(*) from messages m where m.ticket_id = t.id and m.direction = 'in')
                 as incoming_count
        from tickets t
        """
    )
    db.execute(
        """
        create view overdue_tickets as
        select t.id, t.status, t.priority, t.account, t.requester, t.assignee, t.subject,
               t.created_at, t.due_response_at, t.due_resolution_at, t.first_response_at,
               t.response_breached_at, t.resolution_breached_at
        from tickets t
        where t.overdue = 1 and t.status != 'closed'
        """
    )
    db.execute(
        """
        create view ticket_history as
        select e.id, e.ticket_id, t.subject, e.created_at, e.kind, e.actor, e.detail
        from events e join tickets t on t.id = e.ticket_id
        """
    )


@migrations()
def m501_maildir_names(db: Database) -> None:
    # A Maildir message's stable integer id for the import ledger ('sources': folder = the Maildir
    # path, uidvalidity = 0, uid = this id). The unique name (the file name before ':2,') survives
    # the move from new/ to cur/ and any change of flags.
    db["maildir_names"].create(
        {"id": int, "folder": str, "name": str, "created_at": str},
        pk="id",
        not_null={"folder", "name", "created_at"},
    )
    db["maildir_names"].create_index(
        ["folder", "name"], unique=True, index_name="idx_maildir_names_identity"
    )


@migrations()
def m201_daemon_heartbeat(db: Database) -> None:
    # One row per start of 'mail2ticket run': 'status' reads whether a daemon serves this database.
    db["daemon"].create(
        {
            "id": int,
            "pid": int,
            "host": str,
            "version": str,
            "config": str,
            "started_at": str,
            "heartbeat_at": str,
            "stopped_at": str,
            "status": str,
        },
        pk="id",
        not_null={"pid", "host", "started_at", "heartbeat_at"},
    )
    # The running daemon's next run of each scheduled job ('status' shows each account's next poll).
    db["daemon_jobs"].create(
        {"name": str, "account": str, "schedule": str, "next_run_at": str},
        pk="name",
    )


@migrations()
def m102_outbox_raw(db: Database) -> None:
    """Issue 5: acknowledgements and notices keep their bytes in the outbox row itself, so that
    raw_messages holds only mail stored as a message of a ticket (incoming mail, replies)."""
    db["outbox"].add_column("raw", bytes)
    db["outbox"].transform(drop_foreign_keys=["raw_sha256"])


@migrations()
def m111_loop_protection(db: Database) -> None:
    """Issue 5, RELIABILITY 45/46: addresses whose mail bounced get no automatic mail for a while,
    and automatic mail is counted per ticket (the per-address count uses idx_outbox_rate)."""
    db["failing_addresses"].create(
        {
            "address": str,  # lower case
            "reason": str,  # the bounce's status and diagnostic, one line
            "failed_at": str,
            "hold_until": str,  # no automatic mail to it before this (or until it writes to us)
            "ticket_id": int,  # the ticket whose mail bounced
            "message": int,  # the messages row of the bounce
        },
        pk="address",
        not_null={"reason", "failed_at", "hold_until"},
    )
    db["outbox"].create_index(["ticket_id", "created_at"], index_name="idx_outbox_ticket_time")


@migrations()
def m401_gmail_ids(db: Database) -> None:
    """Issue 8, provider quirks: Gmail's message id on the import ledger (one mail under several
    labels is imported once per mailbox) and its thread id on messages (a threading hint)."""
    db["sources"].add_column("gm_mailbox", str)  # "imap host/username": X-GM-MSGID is per mailbox
    db["sources"].add_column("gm_msgid", int)
    db["messages"].add_column("gm_thrid", int)
    db.execute(
        "create index if not exists idx_sources_gm_msgid on sources (gm_mailbox, gm_msgid) "
        "where gm_msgid is not null"
    )
    db.execute(
        "create index if not exists idx_messages_gm_thrid on messages (account, gm_thrid) "
        "where gm_thrid is not null"
    )


@migrations()
def m601_mailbox_checked(db: Database) -> None:
    """Issue 9: when a folder was last opened with a full SELECT. Between such checks a poll asks
    only STATUS (UIDNEXT, UIDVALIDITY), whose cost does not grow with the mailbox."""
    db["mailboxes"].add_column("checked_at", str)


@migrations()
def m611_raw_blob_last(db: Database) -> None:
    """Issue 9, large messages: the raw bytes become the last column of raw_messages. A large
    message is inserted as zeroblob(size) and then written with incremental blob I/O; SQLite
    keeps a zeroblob unexpanded only in a record's last column (elsewhere the insert alone
    allocates the whole size in memory). One-time cost: the table is copied once."""
    db["raw_messages"].transform(column_order=["sha256", "size", "stored_at", "raw"])


@migrations()
def m1410_quarantine_discarded(db: Database) -> None:
    """Issue 14.10: a quarantined message can be discarded ('quarantine discard'); when and where
    its raw bytes were exported first (NULL: not kept)."""
    db["quarantine"].add_column("discarded_at", str)
    db["quarantine"].add_column("export_path", str)


@migrations()
def m1804_metrics(db: Database) -> None:
    """Issue 18.4: failed polls by account and cause, kept across restarts for the counter
    mail2ticket_account_poll_failures_total (tickets/failure_causes.py, docs/metrics.md)."""
    db.execute(
        "create table poll_failure_counts (account text not null, cause text not null, "
        "count integer not null default 0, last_at text, primary key (account, cause))"
    )


@migrations()
def m1801_monitoring(db: Database) -> None:
    """Issue 18.2: one ticket per monitoring problem. One row per monitoring ticket (owned by
    tickets/monitoring.py): the problem's key and facts, its phase (problem or recovered) and
    times. The import looks up the latest ticket of a key, or of a Zabbix event id, by index."""
    db["monitoring"].create(
        {
            "ticket_id": int,
            "account": str,
            "key": str,  # tool, host, service: lower case, joined by \x1f (tickets/monitoring.problem_key)
            "tool": str,
            "host": str,
            "service": str,  # the service, alert or trigger name; null for a host alert
            "event_id": str,
            "state": str,  # the tool's word in the latest mail (CRITICAL, DOWN, OK, FIRING...)
            "severity": str,  # of the problem: critical, warning, unknown, info (or the tool's label)
            "phase": str,  # problem | recovered
            "started_at": str,  # when the problem (or its return within the flap window) began
            "recovered_at": str,
            "last_at": str,  # the latest mail's date
            "mails": int,  # monitoring mails of this problem
        },
        pk="ticket_id",
        foreign_keys=[("ticket_id", "tickets", "id")],
        not_null={"account", "key", "tool", "phase", "last_at"},
    )
    db.execute("create index idx_monitoring_key on monitoring (account, key, ticket_id)")
    db.execute("create index idx_monitoring_event on monitoring (account, tool, event_id, ticket_id) "
               "where event_id is not null")
    db.execute("create index idx_monitoring_service on monitoring (service collate nocase)")
    db.execute("create index idx_monitoring_host on monitoring (host collate nocase)")


@migrations()
def m1803_hooks(db: Database) -> None:
    """Issue 18.3: hooks. hook_subscriptions is the config's [[hooks]] as rows (written when a
    command or the daemon loads the config): one row per (hook, history kind, account or NULL
    for every account). hook_deliveries is the queue, filled by log_event in the event's own
    transaction (tickets/hookqueue.py owns both)."""
    db["hook_subscriptions"].create(
        {"hook": str, "kind": str, "event": str, "account": str},
        not_null={"hook", "kind", "event"},
    )
    db["hook_subscriptions"].create_index(["kind"], index_name="idx_hook_subscriptions_kind")
    db["hook_deliveries"].create(
        {
            "id": int,
            "hook": str,
            "event": str,  # the public event name (ticket.created, ...)
            "event_id": int,  # the events row
            "ticket_id": int,
            "account": str,
            "created_at": str,
            "payload": str,  # the event's JSON, frozen when the event's transaction commits
            "status": str,  # pending, delivered, failed
            "attempts": int,
            "next_attempt_at": str,  # not before this (a claim or a backoff); NULL: due now
            "delivered_at": str,
            "last_error": str,
            "last_result": str,  # "HTTP 200", "exit 0", with the time taken
        },
        pk="id",
        defaults={"status": "pending", "attempts": 0},
        not_null={"hook", "event", "created_at", "status", "attempts"},
    )
    db.execute("create index idx_hook_deliveries_due on hook_deliveries (status, next_attempt_at)")
    db.execute("create index idx_hook_deliveries_hook on hook_deliveries (hook, status)")
    db.execute("create index idx_hook_deliveries_unfrozen on hook_deliveries (id) where payload is null")


@migrations()
def m1702_leases(db: Database) -> None:
    """Issue 17.2: several daemons on one database. daemons (who is alive), account_leases (which
    daemon holds each account, with an epoch for fencing), group_jobs (which daemon runs a
    group-wide job this period); tickets/leases.py owns all three (the same SQL on PostgreSQL)."""
    for sql in LEASE_TABLES:
        db.execute(sql)
