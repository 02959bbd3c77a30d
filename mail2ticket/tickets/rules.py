"""Routing rules ([[rules]]): match each new mail, then set priority, tags, assignee, queue, or ignore it."""

from __future__ import annotations

import logging
from typing import Any

from mail2ticket.config.model import Config
from mail2ticket.config.rules import RULE_TIME_LIMIT, Rule
from mail2ticket.tickets.db import log_event, now_iso
from mail2ticket.tickets.sla import has_targets, set_due_times
from mail2ticket.tickets.tickets import (
    add_tags,
    set_account,
    set_assignee,
    set_priority,
    set_status,
)

log = logging.getLogger(__name__)

ACTIONS = ("priority", "tags", "assignee", "queue", "acknowledge", "ignore")


# --- validation (called by config.load_config) -----------------------------------------------


# --- applying ------------------------------------------------------------------------------------


def matching_rules(cfg: Config, parsed: Any, account: str | None = None) -> list[Rule]:
    """The rules that apply to a mail, in order (a matching rule with stop = true ends the list).

    ``account`` is the account the mail arrived on; rules limited to accounts never match
    without one. This is what 'mail2ticket parse FILE' shows.
    """
    return evaluate_rules(cfg, parsed, account)[0]


def evaluate_rules(cfg: Config, parsed: Any, account: str | None = None) -> tuple[list[Rule], list[str]]:
    """(the matching rules, a warning for each rule skipped on this mail).

    Each rule runs under RULE_TIME_LIMIT; one that runs out of time or fails is skipped for this
    mail (the importer records the warning on the ticket), and the others still apply. The
    importer runs this before its write transaction, so a slow rule never holds the database."""
    out: list[Rule] = []
    warnings: list[str] = []
    for rule in getattr(cfg, "rules", None) or []:
        try:
            matched = rule.matches(parsed, account)
        except TimeoutError:
            warnings.append(f"rule {rule.name!r} skipped for this mail: it ran past its time limit "
                            f"({RULE_TIME_LIMIT} s); make its pattern simpler")
            continue
        except Exception as exc:  # noqa: BLE001 - one broken rule must not stop the import
            warnings.append(f"rule {rule.name!r} skipped for this mail: {exc.__class__.__name__}: {exc}")
            continue
        if matched:
            out.append(rule)
            if rule.stop:
                break
    for warning in warnings:
        log.warning("%s (message %s)", warning, getattr(parsed, "message_id", None) or "without Message-ID")
    return out, warnings


def suppresses_ack(outcome: Any) -> bool:
    """Whether a rule (acknowledge = false, or ignore = true) forbids acknowledging this mail.

    The acknowledgement code calls this with the importer's Outcome; the reason is in
    ``outcome.no_ack`` (e.g. "rule 'newsletters'").
    """
    return bool(getattr(outcome, "no_ack", None))


def apply_to_mail(cfg: Config, db: Any, outcome: Any, parsed: Any,
                  evaluated: tuple[list[Rule], list[str]] | None = None) -> list[Rule]:
    """Run inside the import transaction for each stored mail: apply the matching rules to its
    ticket (each recorded as an event), then set the SLA due times of a new ticket.

    ``evaluated``: what evaluate_rules gave for this mail, run before the transaction; a rule
    skipped there is recorded on the ticket as a 'rule-skipped' event."""

    ticket_id = outcome.ticket_id
    if ticket_id is None:
        return []
    is_new = outcome.status == "imported"
    rules, warnings = evaluated if evaluated is not None else evaluate_rules(cfg, parsed, outcome.incoming.account)
    for warning in warnings:
        log_event(db, "rule-skipped", warning, ticket_id=ticket_id, account=outcome.incoming.account)
    due_changed = is_new
    ignored_by = None
    for rule in rules:
        actor = f"rule {rule.name}"
        effects = []
        if rule.priority and set_priority(db, ticket_id, rule.priority, actor=actor, event=False):
            effects.append(f"priority {rule.priority}")
            due_changed = True
        if rule.tags:
            added = add_tags(db, ticket_id, rule.tags, actor=actor, event=False)
            if added:
                effects.append("tags " + ", ".join(added))
        if rule.assignee and set_assignee(db, ticket_id, rule.assignee, actor=actor, event=False):
            effects.append(f"assigned to {rule.assignee}")
        if rule.queue and set_account(db, ticket_id, rule.queue, actor=actor, event=False):
            effects.append(f"queue {rule.queue}")
            due_changed = True
        if rule.acknowledge is False:
            outcome.no_ack = outcome.no_ack or f"rule {rule.name!r}"
            effects.append("no acknowledgement")
        if rule.ignore:
            ignored_by = ignored_by or rule.name
            effects.append("ignored")
        log_event(db, "rule", f"{rule.name}: {', '.join(effects) or 'nothing to change'}",
                  ticket_id=ticket_id, account=outcome.incoming.account, actor=actor)
    if ignored_by is not None:
        outcome.no_ack = outcome.no_ack or f"ignored by rule {ignored_by!r}"
        actor = f"rule {ignored_by}"
        if is_new:
            set_status(db, ticket_id, "closed", now_iso())
            add_tags(db, ticket_id, ["ignored"], actor=actor, event=False)
            log_event(db, "ignored", "the ticket was closed as ignored", ticket_id=ticket_id, actor=actor)
            return rules
        previous = outcome.previous_status or "open"
        set_status(db, ticket_id, previous, now_iso())
        log_event(db, "ignored", f"the message was stored; the ticket stays {previous}",
                  ticket_id=ticket_id, actor=actor)
    if due_changed and (has_targets(cfg) or not is_new):
        # A new ticket without SLA targets has no due times to set (its columns start empty).
        set_due_times(cfg, db, ticket_id)
    return rules
