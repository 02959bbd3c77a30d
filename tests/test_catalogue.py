"""The failure catalogue (RELIABILITY.md section b, items 1-52) mapped to the tests that cover it
(figure 16): every item names at least one test that exists, or says in one line why it is out
of scope. An item marked pending fails the test: CI fails while any item is missing.

A test is named by its pytest node id: ``tests/file.py::test_name`` (any parameter) or
``tests/file.py::test_name[param]`` (that one). The ids are checked against pytest's own
collection: the running session's when it holds the files named, else a ``--collect-only`` run of
just those files. docs/reliability.md, "The failure catalogue", is the prose form of this table.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ITEMS = range(1, 53)  # RELIABILITY.md section b; every one must be in the table
# Items from 53 on are the project's own: holes found by attacks on the running program and by users
# (docs/reliability.md, "Our own items"). They are numbered in the order they were found.


@dataclass(frozen=True)
class Tests:
    """The item is covered by these node ids."""

    ids: tuple[str, ...]


@dataclass(frozen=True)
class OutOfScope:
    """Deliberately not built; the reason says why."""

    reason: str


@dataclass(frozen=True)
class Pending:
    """No test yet; the reason says who or what it waits for. Fails the catalogue test: figure 16
    says CI fails while any item is missing. Use it only on a branch, never on main."""

    reason: str


def tests(*ids: str) -> Tests:
    return Tests(ids)


Tests.__test__ = tests.__test__ = False  # helpers, not tests (their names start with "test")


EO = "tests/test_exactly_once.py::test_sigkill_at_random_moments_loses_nothing_and_imports_nothing_twice"
TLS_IMAP = "tests/test_tls_matrix.py::test_poll_refuses_every_unsafe_imap_transport_and_never_sends_the_password_in_clear"
TLS_SMTP = "tests/test_tls_matrix.py::test_sending_refuses_every_unsafe_smtp_transport_and_never_sends_the_password_in_clear"
INGEST_BOUND = "tests/test_hostile_input.py::test_pathological_mail_through_ingest_exits_0_within_the_bound"
POLL_BOUND = "tests/test_hostile_input.py::test_pathological_mail_through_poll_ends_as_a_ticket_or_quarantined_within_bounds"
FAULTS = "tests/test_server_faults.py"
HIJACK = "tests/test_hijack.py::test_a_forged_follow_up_gets_nowhere"

PUSH_SCALE = "tests/test_push_scale.py"

CATALOGUE: dict[int, Tests | OutOfScope | Pending] = {
    # Process, IMAP and storage faults
    1: tests(EO),
    2: tests(
        f"{FAULTS}::test_a_kill_between_uid_store_deleted_and_uid_expunge_imports_nothing_twice_and_another_clients_deleted_mail_is_imported",
        f"{FAULTS}::test_mail_another_client_marked_deleted_is_imported_and_only_our_uids_are_expunged",
    ),
    3: tests(EO, "tests/test_pipeline.py::test_a_worker_writes_attachments_and_hands_back_only_their_metadata"),
    4: tests(
        "tests/test_network_faults.py::test_a_connection_cut_mid_fetch_stores_nothing_partial_and_the_next_poll_completes",
        "tests/test_network_faults.py::test_connections_cut_again_and_again_still_import_everything_exactly_once",
    ),
    5: tests(f"{FAULTS}::test_an_ok_answer_without_the_body_stores_nothing_flags_nothing_and_the_next_poll_imports_it"),
    6: tests(f"{FAULTS}::test_a_uid_expunged_by_another_client_after_our_search_is_a_no_op_and_the_rest_is_imported"),
    7: tests("tests/test_ledger.py::test_only_uid_commands_are_sent_and_other_clients_deleted_mail_is_left_alone"),
    8: tests(
        "tests/test_uidvalidity.py::test_a_new_uidvalidity_rescans_the_folder_loses_nothing_and_duplicates_nothing",
        "tests/test_uidvalidity.py::test_repeated_resets_with_mail_arriving_each_time_keep_exactly_one_entry_per_message",
    ),
    9: tests(
        f"{FAULTS}::test_a_fetch_answer_imapclient_cannot_parse_is_quarantined_after_three_tries_and_never_blocks_the_rest",
    ),
    10: tests(
        "tests/test_pipeline.py::test_batches_are_bounded_by_count_and_by_announced_size",
        "tests/test_network_faults.py::test_errors_back_off_per_account_and_show_in_status",
    ),
    11: tests("tests/test_threading.py::test_one_mail_arriving_in_two_monitored_mailboxes_makes_one_ticket"),
    12: tests("tests/test_ledger.py::test_different_messages_sharing_a_message_id_or_having_none_are_all_imported"),
    13: tests("tests/test_ledger.py::test_different_messages_sharing_a_message_id_or_having_none_are_all_imported"),
    14: tests(
        "tests/test_quarantine.py::test_an_over_size_message_is_quarantined_without_download_and_imported_by_retry_once_allowed",
        "tests/test_uidvalidity.py::test_an_over_size_message_keeps_one_open_quarantine_entry_across_a_reset",
    ),
    15: tests(
        "tests/test_ingest.py::test_a_locked_database_gives_exit_75_within_the_lock_timeout_and_nothing_is_lost",
        "tests/test_ingest.py::test_a_lock_shorter_than_the_lock_timeout_is_waited_for",
    ),
    16: tests(
        "tests/test_disk_full.py::test_a_full_disk_fails_clearly_flags_nothing_unstored_and_recovers_once_space_is_freed",
        "tests/test_ingest.py::test_an_attachment_directory_that_cannot_be_written_gives_exit_75_and_stores_nothing",
        "tests/test_ingest.py::test_a_store_that_cannot_be_written_gives_exit_75_and_says_why",
    ),
    17: tests("tests/test_store.py::test_a_new_database_is_wal_synchronous_full_with_every_migration"),
    18: tests("tests/test_parse_headers.py::test_undecodable_header_bytes_never_become_surrogates", EO),
    19: tests(EO, "tests/test_ledger.py::test_importing_the_same_message_again_changes_nothing"),
    # Parser robustness
    20: tests(
        "tests/test_parse_headers.py::test_address_header_that_breaks_the_stdlib_parser_is_a_defect",
        "tests/test_parse_headers.py::test_exchange_style_bracketed_message_id_is_kept",
    ),
    21: tests(
        "tests/test_parse_charsets.py::test_unknown_or_missing_charset_on_8bit_text_is_detected",
        "tests/test_parse_headers.py::test_encoded_word_with_unknown_charset_falls_back_and_records_a_defect",
    ),
    22: tests(
        "tests/test_parse_headers.py::test_encoded_word_decoding_to_newlines_never_yields_a_multi_line_subject",
        "tests/test_smtp.py::test_a_subject_with_encoded_line_breaks_cannot_add_headers_to_the_acknowledgement",
    ),
    23: tests(
        "tests/test_parse_pathological.py::test_thousands_of_nested_parts_are_cut_at_the_depth_limit",
        f"{INGEST_BOUND}[23: 1,000-level nested multipart]", POLL_BOUND,
    ),
    24: tests(
        "tests/test_parse_pathological.py::test_a_hundred_thousand_parts_end_in_quarantine_quickly",
        f"{INGEST_BOUND}[24: 100,000 tiny parts]", POLL_BOUND,
    ),
    25: tests(
        "tests/test_parse_pathological.py::test_many_encoded_words_and_addresses_parse_in_linear_time",
        "tests/test_parse_pathological.py::test_a_header_section_over_the_limit_is_quarantined",
        f"{INGEST_BOUND}[25: 20,000 encoded addresses and words]", POLL_BOUND,
    ),
    26: tests("tests/test_pipeline.py::test_a_message_that_crashes_or_hangs_its_parser_is_quarantined_and_the_rest_imported"),
    27: tests("tests/test_sender_and_date.py::test_a_colon_heavy_sender_that_makes_parseaddr_recurse_is_an_unknown_sender_with_a_defect"),
    28: tests(
        "tests/test_sender_and_date.py::test_an_ambiguous_sender_is_unknown_never_the_first_or_the_second_address",
        "tests/test_parse_headers.py::test_an_address_in_the_name_slot_never_becomes_the_sender",
    ),
    29: tests(
        "tests/test_sender_and_date.py::test_a_garbage_date_falls_back_to_the_servers_internaldate_and_is_kept_raw",
        "tests/test_parse_headers.py::test_garbage_date_is_none_with_a_defect",
    ),
    30: tests(
        "tests/test_parse_pathological.py::test_bare_lf_and_mixed_line_endings_parse_alike",
        "tests/test_reply.py::test_reply_mails_a_threaded_tagged_answer_and_stores_it_in_the_ticket",
    ),
    31: tests("tests/test_parse_pathological.py::test_unknown_transfer_encoding_keeps_the_raw_part"),
    32: tests(
        "tests/test_parse_pathological.py::test_headers_only_message_is_a_ticket",
        "tests/test_parse_headers.py::test_missing_message_id_and_from_are_defects_not_errors",
        "tests/test_ingest.py::test_an_empty_message_is_refused_and_is_not_a_success",
    ),
    33: tests(
        "tests/test_parse_bodies.py::test_pathological_html_converts_quickly",
        f"{INGEST_BOUND}[33: 5,000-link HTML with nested entities]", POLL_BOUND,
    ),
    # Hostile content and spoofing
    34: tests(
        "tests/test_hostile_input.py::test_a_hundred_hostile_file_names_and_content_ids_create_no_file_outside_the_attachment_root",
        "tests/test_parse_attachments.py::test_safe_filename_is_never_usable_as_a_path",
        "tests/test_parse_attachments.py::test_hostile_names_in_a_mail_are_kept_only_as_original_filename",
    ),
    35: tests("tests/test_parse_bodies.py::test_html_becomes_readable_text_with_links_kept_and_scripts_dropped"),
    36: tests("tests/test_parse_bodies.py::test_html_is_never_fetched"),
    37: tests("tests/test_threading.py::test_a_forged_subject_tag_from_a_stranger_makes_a_new_ticket"),
    38: tests("tests/test_threading.py::test_references_quoting_our_id_form_without_a_valid_token_are_not_trusted"),
    39: tests(
        f"{HIJACK}[39 X-Mail2ticket-Ticket]", f"{HIJACK}[39 X-Mail2ticket-Status]",
        f"{HIJACK}[39 X-Mail2ticket-Priority and -Assignee]", f"{HIJACK}[39 X-Loop naming the desk]",
        f"{HIJACK}[39 other helpdesks' control headers]", f"{HIJACK}[39 our From with a foreign Message-ID]",
    ),
    40: tests(
        "tests/test_dmarc.py::test_a_from_failing_dmarc_at_our_server_opens_its_own_ticket_and_gets_no_acknowledgement",
        "tests/test_dmarc.py::test_a_new_mail_failing_dmarc_at_our_server_gets_no_acknowledgement_while_foreign_verdicts_change_nothing",
        "tests/test_dmarc.py::test_without_authserv_id_no_authentication_results_header_is_believed",
        "tests/test_dmarc.py::test_only_our_servers_dmarc_fail_marks_the_sender_unverified",
        f"{HIJACK}[40 Authentication-Results of a foreign server saying pass]",
        "tests/test_monitoring_tickets.py::test_a_forged_recovery_closes_nothing",
    ),
    41: tests(
        "tests/test_smtp.py::test_a_subject_with_encoded_line_breaks_cannot_add_headers_to_the_acknowledgement",
        "tests/test_smtp.py::test_compose_strips_line_breaks_and_refuses_addresses_with_them",
    ),
    42: tests(
        "tests/test_parse_pathological.py::test_many_encoded_words_and_addresses_parse_in_linear_time",
        f"{INGEST_BOUND}[25: 20,000 encoded addresses and words]",
    ),
    # Loops and auto-replies
    43: tests(
        "tests/test_acknowledge.py::test_automatic_mail_makes_a_ticket_but_gets_no_acknowledgement",
        "tests/test_parse_autoreply.py::test_automatic_mail_is_classified_with_its_reason",
    ),
    44: tests(
        "tests/test_threading.py::test_our_own_mail_fetched_back_is_not_a_new_ticket",
        "tests/test_acknowledge.py::test_two_mail2ticket_instances_acknowledging_each_other_do_not_loop",
    ),
    45: tests(
        "tests/test_loops.py::test_an_echo_bot_gets_at_most_40_automatic_mails_a_day_however_many_rounds_it_plays",
        "tests/test_loops.py::test_notices_on_one_ticket_stop_at_10_in_10_minutes_while_a_bot_echoes_each_of_them",
        "tests/test_acknowledge.py::test_a_responder_that_ignores_the_standards_gets_one_acknowledgement",
    ),
    46: tests(
        "tests/test_acknowledge.py::test_a_bounce_gets_no_acknowledgement",
        "tests/test_threading.py::test_a_bounce_of_our_acknowledgement_joins_the_ticket_and_is_not_answered",
        "tests/test_bounces.py::test_a_bounce_of_our_acknowledgement_joins_the_ticket_and_marks_the_address_as_failing",
        "tests/test_bounces.py::test_only_a_recipient_of_the_quoted_mail_can_be_marked_as_failing",
    ),
    # Transport security and secrets
    47: tests(
        f"{TLS_IMAP}[expired]", f"{TLS_IMAP}[untrusted]", f"{TLS_IMAP}[wrong-host]",
        f"{TLS_SMTP}[expired]", f"{TLS_SMTP}[untrusted]", f"{TLS_SMTP}[wrong-host]",
        "tests/test_diagnostics.py::test_a_bad_certificate_fails_at_the_tls_step_and_says_which_problem",
    ),
    48: tests(
        f"{TLS_IMAP}[no-starttls]", f"{TLS_IMAP}[stripped-starttls]", f"{TLS_IMAP}[preauth-plaintext]",
        f"{TLS_SMTP}[no-starttls]", f"{TLS_SMTP}[stripped-starttls]",
        "tests/test_smtp.py::test_a_server_that_does_not_offer_starttls_never_sees_the_password",
    ),
    49: tests(f"{TLS_IMAP}[injected-pre-tls-bytes]", f"{TLS_SMTP}[injected-pre-tls-bytes]"),
    50: tests(
        "tests/test_network_faults.py::test_a_stalled_server_times_out_quickly_with_a_clear_error",
        "tests/test_hooks.py::test_a_webhook_that_answers_a_byte_at_a_time_is_cut_at_the_hooks_time_limit",
    ),
    51: tests(
        "tests/test_secrets.py::test_without_any_keyring_backend_the_daemon_exits_at_once_with_one_actionable_line",
        "tests/test_secrets.py::test_with_a_systemd_credential_and_no_keyring_the_daemon_starts",
    ),
    52: tests(
        "tests/test_secrets_canary.py::test_a_canary_password_appears_nowhere_but_the_keyring_after_every_command_at_debug_level",
        "tests/test_secrets_canary.py::test_a_refused_login_at_debug_level_names_the_account_but_not_the_password",
        "tests/test_secrets.py::test_a_failing_password_command_says_so_without_printing_what_it_wrote",
        "tests/test_secrets_canary.py::test_a_hooks_signing_secret_appears_nowhere_but_the_keyring",
    ),
    # Issue 15 (parser fidelity), tests/test_parse_fidelity.py:
    77: tests(
        "tests/test_parse_fidelity.py::test_an_encoded_word_with_a_comma_in_an_unquoted_name_is_one_mailbox",
        "tests/test_parse_fidelity.py::test_encoded_names_with_commas_in_a_to_list_keep_every_address",
        "tests/test_parse_fidelity.py::test_an_encoded_word_cannot_smuggle_an_address_past_the_real_one",
    ),
    63: tests(
        "tests/test_install.py::test_install_test_deps_keeps_the_system_dovecot_disabled_and_installs_into_a_venv",
        "tests/test_install.py::test_a_dovecot_installed_before_is_left_as_it_was",
        "tests/test_install.py::test_install_without_test_installs_the_package_only",
        "tests/test_install.py::test_ci_runs_the_readmes_test_command_as_written",
        "tests/test_install.py::test_the_quick_start_installs_into_a_venv_and_runs_the_demo",
    ),
    60: tests(
        "tests/test_after_import.py::test_a_wrong_move_folder_never_stops_new_mail_and_a_fixed_config_moves_the_pending_ones",
        "tests/test_after_import.py::test_a_changed_after_import_applies_to_actions_still_pending",
        "tests/test_after_import.py::test_accounts_test_names_a_missing_move_folder_and_the_folders_the_server_has",
        "tests/test_after_import.py::test_add_account_refuses_a_move_folder_that_does_not_exist",
        "tests/test_provider_quirks.py::test_archive_on_a_server_with_neither_an_archive_nor_an_all_folder_imports_and_leaves_the_mail",
    ),
    81: tests(
        "tests/test_parse_fidelity.py::test_a_phrase_and_a_comment_give_the_phrase_as_the_name",
        "tests/test_parse_fidelity.py::test_a_comment_is_the_name_only_when_there_is_no_phrase",
        "tests/test_parse_fidelity.py::test_an_unparseable_address_keeps_the_display_name_the_raw_header_and_a_defect",
    ),
    64: tests(
        "tests/test_demo.py::test_the_demo_never_shows_in_the_users_own_queue",
        "tests/test_demo.py::test_the_demo_config_keeps_its_own_storage_and_never_moves_its_sample_files",
    ),
    70: tests(
        "tests/test_narrow_terminal.py::test_tickets_list_at_80_columns_is_one_line_per_ticket_with_the_subject_cut_by_an_ellipsis",
        "tests/test_narrow_terminal.py::test_tickets_list_on_a_wide_terminal_shows_every_column_in_full",
        "tests/test_narrow_terminal.py::test_status_at_80_columns_is_one_line_per_account_and_no_line_wider",
        "tests/test_narrow_terminal.py::test_other_tables_at_80_columns_are_one_line_per_row",
    ),
    82: tests(
        "tests/test_parse_fidelity.py::test_an_mbox_from_line_or_a_bom_before_the_headers_is_skipped",
        "tests/test_parse_fidelity.py::test_a_header_block_after_a_few_stray_lines_is_recovered_with_a_defect",
        "tests/test_parse_fidelity.py::test_text_that_merely_mentions_a_header_stays_a_body",
        "tests/test_parse_fidelity.py::test_the_large_message_path_recovers_the_same_header_block",
    ),
    55: tests(
        "tests/test_rule_limits.py::test_a_backtracking_rule_is_cut_off_the_mail_is_stored_and_the_cli_reads_meanwhile",
        "tests/test_rule_limits.py::test_the_daemon_stops_on_sigterm_while_a_backtracking_rule_runs",
        "tests/test_rule_limits.py::test_a_pattern_with_nested_quantifiers_is_refused_at_load_naming_the_rule",
        "tests/test_rule_limits.py::test_ordinary_patterns_are_accepted",
    ),
    83: tests(
        "tests/test_parse_fidelity.py::test_a_lone_base64_part_under_a_missing_boundary_is_decoded_by_its_headers",
        "tests/test_parse_fidelity.py::test_a_lone_quoted_printable_part_under_a_missing_boundary_is_decoded",
        "tests/test_parse_fidelity.py::test_a_lone_base64_attachment_under_a_missing_boundary_is_an_attachment",
        "tests/test_parse_fidelity.py::test_text_without_part_headers_under_a_missing_boundary_stays_as_written",
    ),
    84: tests(
        "tests/test_parse_headers.py::test_recipient_lists_are_lower_case_addresses",
        "tests/test_parse_headers.py::test_address_header_that_breaks_the_stdlib_parser_is_a_defect",
    ),
    # Our own items (docs/reliability.md, "Our own items")
    53: tests(
        "tests/test_hijack.py::test_forged_customer_ids_and_reference_chains_get_nowhere_and_reply_all_reaches_only_participants",
        HIJACK,
        "tests/test_threading.py::test_a_stranger_naming_a_customers_message_id_opens_a_new_ticket_and_gets_no_reply_all",
        "tests/test_threading.py::test_a_forged_references_chain_with_our_acknowledgements_id_does_not_let_a_stranger_in",
        "tests/test_threading.py::test_a_colleague_copied_on_the_ticket_may_reply_by_headers",
        "tests/test_threading.py::test_a_forged_copy_of_the_customers_mail_adds_no_participant",
        "tests/test_threading.py::test_a_forged_bounce_quoting_our_id_adds_no_participant_and_does_not_reopen",
        "tests/test_provider_quirks.py::test_gmails_thread_id_attaches_only_mail_from_a_participant",
    ),
    54: tests(
        "tests/test_bounces.py::test_a_report_written_by_a_participant_marks_nobody",
        "tests/test_bounces.py::test_a_report_about_mail_that_was_never_sent_marks_nobody",
        "tests/test_bounces.py::test_with_authserv_id_only_a_report_our_own_mail_server_authenticated_marks_an_address",
        "tests/test_threading.py::test_a_forged_bounce_quoting_our_id_adds_no_participant_and_does_not_reopen",
    ),
    56: tests(
        "tests/test_ack_limits.py::test_one_mailbox_behind_subaddresses_and_dots_gets_one_acknowledgement",
        "tests/test_ack_limits.py::test_a_flood_from_many_addresses_is_capped_per_account_and_hour",
        "tests/test_ack_limits.py::test_the_account_cap_is_on_by_default",
        "tests/test_ack_limits.py::test_the_default_acknowledgement_does_not_repeat_the_subject_or_the_text",
        "tests/test_ack_limits.py::test_no_automatic_mail_goes_to_an_address_that_is_no_outside_mailbox",
        "tests/test_acknowledge.py::test_a_new_ticket_gets_a_threaded_tagged_auto_replied_acknowledgement",
    ),
    57: tests(
        "tests/test_reply.py::test_reply_all_to_thousands_of_cc_refuses_without_yes_and_stores_a_bounded_cc_list",
        "tests/test_reply.py::test_reply_all_within_the_limit_needs_no_yes_and_the_limit_is_configurable",
    ),
    65: tests(
        "tests/test_old_mail.py::test_add_account_says_how_many_mails_the_first_poll_imports_and_how_to_skip_old_ones",
        "tests/test_old_mail.py::test_add_account_with_since_counts_only_the_mail_from_that_day_on",
        "tests/test_old_mail.py::test_add_account_on_a_terminal_asks_from_which_date_to_import",
        "tests/test_old_mail.py::test_the_list_shows_and_sorts_by_the_date_of_the_first_mail_never_later_than_its_arrival",
        "tests/test_old_mail.py::test_closing_old_mail_by_filter_counts_and_asks_first",
        "tests/test_old_mail.py::test_ticket_commands_take_several_ids_and_check_them_all_first",
    ),
    80: tests(
        "tests/test_parse_fidelity.py::test_html_with_text_the_plain_part_lacks_is_the_readable_body",
        "tests/test_parse_fidelity.py::test_the_plain_alternative_the_body_does_not_show_is_kept_as_a_part",
        "tests/test_parse_fidelity.py::test_alternatives_that_agree_keep_the_plain_body_and_add_no_part",
        "tests/test_parse_fidelity.py::test_when_each_alternative_has_its_own_text_the_longer_is_the_body_and_the_other_a_part",
        "tests/test_parse_fidelity.py::test_a_poll_shows_the_html_only_text_and_stores_the_plain_alternative",
        "tests/test_parse_fidelity.py::test_the_large_message_path_picks_the_same_alternative",
    ),
    71: tests(
        "tests/test_exit_codes.py::test_a_wrong_password_is_exit_4_in_poll_as_in_accounts_test_and_is_said_once",
        "tests/test_exit_codes.py::test_a_missing_password_is_exit_7_in_poll_as_in_accounts_test",
        "tests/test_exit_codes.py::test_accounts_failing_for_different_causes_make_poll_exit_1",
        "tests/test_exit_codes.py::test_poll_json_gives_each_accounts_exit_code",
        "tests/test_exit_codes.py::test_a_duplicate_account_name_in_add_account_is_a_usage_error",
    ),
    59: tests(
        "tests/test_service_user.py::test_root_is_refused_on_a_database_owned_by_the_service_user_and_leaves_nothing_behind",
        "tests/test_service_user.py::test_a_lock_file_the_service_user_cannot_open_fails_the_poll_and_shows_in_status",
    ),
    66: tests(
        "tests/test_typos.py::test_an_unknown_account_is_an_error_naming_the_known_ones",
        "tests/test_typos.py::test_an_assignee_that_never_existed_is_an_error_naming_the_known_ones",
        "tests/test_typos.py::test_an_account_that_is_gone_from_the_config_but_has_tickets_can_still_be_listed",
        "tests/test_typos.py::test_an_unknown_status_is_an_error_naming_the_known_ones",
        "tests/test_typos.py::test_global_options_work_after_the_subcommand",
    ),
    72: tests(
        "tests/test_config_check.py::test_a_config_that_can_work_passes",
        "tests/test_config_check.py::test_a_config_that_cannot_work_fails_with_one_line_naming_the_problem",
        "tests/test_config_check.py::test_every_problem_is_one_line",
        "tests/test_config_check.py::test_online_signs_in_to_each_account_like_accounts_test",
        "tests/test_config_check.py::test_online_fails_with_the_cause_of_the_failing_step",
    ),
    78: tests(
        "tests/test_parse_fidelity.py::test_a_raw_shift_jis_subject_and_display_name_without_any_label_are_read",
        "tests/test_parse_fidelity.py::test_a_raw_shift_jis_subject_in_a_mail_whose_body_is_iso_2022_jp_is_read",
        "tests/test_parse_fidelity.py::test_an_encoded_word_labelled_iso_2022_jp_that_holds_shift_jis_is_read",
        "tests/test_parse_fidelity.py::test_euc_jp_labelled_shift_jis_is_read",
        "tests/test_parse_fidelity.py::test_an_iso_2022_jp_body_is_recognised_by_its_escape_sequences_whatever_the_label",
        "tests/test_parse_fidelity.py::test_a_raw_iso_2022_jp_subject_keeps_its_escape_bytes_until_decoded",
    ),
    79: tests(
        "tests/test_parse_fidelity.py::test_a_short_unlabelled_subject_is_read_in_its_charset",
        "tests/test_parse_fidelity.py::test_a_short_body_without_a_charset_is_read_in_its_charset",
        "tests/test_parse_fidelity.py::test_what_the_rest_of_the_message_says_settles_an_ambiguous_text",
        "tests/test_parse_fidelity.py::test_guessing_is_bounded_per_message_and_the_subject_still_comes_first",
    ),
    73: tests(
        "tests/test_editor_and_ids.py::test_reply_without_text_or_terminal_starts_no_editor_and_says_what_to_give",
        "tests/test_editor_and_ids.py::test_without_a_terminal_even_a_set_editor_is_not_started",
        "tests/test_editor_and_ids.py::test_reply_reads_standard_input_with_file_dash",
        "tests/test_editor_and_ids.py::test_on_a_terminal_the_editor_is_opened",
        "tests/test_editor_and_ids.py::test_a_ticket_id_is_accepted_as_the_tool_prints_it",
        "tests/test_editor_and_ids.py::test_a_ticket_id_that_is_not_a_number_is_a_usage_error_naming_the_form",
        "tests/test_quarantine_discard.py::test_quarantine_ids_are_accepted_as_the_tool_prints_them",
    ),
    85: tests(
        "tests/test_big_local_paths.py::test_ingest_of_a_50_mb_pathological_message_stays_under_150_mb[qp-soft-breaks]",
        "tests/test_big_local_paths.py::test_ingest_of_a_50_mb_pathological_message_stays_under_150_mb[junk-base64]",
        "tests/test_big_local_paths.py::test_ingest_of_a_50_mb_attachment_stores_it_byte_for_byte",
        "tests/test_big_local_paths.py::test_a_maildir_poll_of_a_50_mb_attachment_is_bounded_and_byte_for_byte",
        "tests/test_big_local_paths.py::test_a_small_message_of_millions_of_short_lines_is_parsed_in_bounded_memory_too",
    ),
    86: tests(
        "tests/test_big_local_paths.py::test_quarantine_retry_of_a_50_mb_message_is_bounded_and_byte_for_byte",
        "tests/test_big_local_paths.py::test_reparse_of_a_50_mb_message_is_bounded_and_restores_the_attachment",
        "tests/test_big_local_paths.py::test_quarantine_retry_fetches_a_large_message_left_on_the_server_in_pieces",
    ),
    74: tests(
        "tests/test_quarantine_discard.py::test_discard_keeps_the_raw_bytes_in_an_export_file_and_status_no_longer_counts_it",
        "tests/test_quarantine_discard.py::test_discard_asks_for_confirmation_and_without_a_terminal_needs_yes",
        "tests/test_quarantine_discard.py::test_discard_without_export_says_the_bytes_are_not_kept",
        "tests/test_quarantine_discard.py::test_export_writes_the_raw_message_to_a_file_for_a_bug_report",
        "tests/test_quarantine_discard.py::test_a_message_never_downloaded_is_discarded_with_a_word_that_no_bytes_are_kept",
    ),
    67: tests(
        "tests/test_hints.py::test_every_readme_section_and_docs_anchor_named_in_code_help_or_docs_exists",
        "tests/test_hints.py::test_a_wrong_password_without_a_terminal_says_to_rerun_add_account_and_saves_nothing",
        "tests/test_hints.py::test_a_wrong_password_on_a_terminal_is_asked_again",
        "tests/test_hints.py::test_the_documented_health_check_fails_for_a_service_that_never_came_up",
        "tests/test_hints.py::test_the_ingest_help_examples_are_the_documented_setup",
    ),
    75: tests(
        "tests/test_machine_output.py::test_status_and_quarantine_list_piped_give_iso_8601_utc_like_tickets_list",
    ),
    76: tests(
        "tests/test_machine_output.py::test_run_logs_carry_a_timestamp_when_not_under_journald",
        "tests/test_machine_output.py::test_under_journald_the_log_has_no_timestamp_of_its_own",
        "tests/test_machine_output.py::test_reparse_counts_one_message_in_the_singular",
    ),
    68: tests(
        "tests/test_account_display.py::test_a_password_account_shows_no_oauth_keys_and_no_empty_ones",
        "tests/test_account_display.py::test_an_oauth_account_shows_its_oauth_keys_and_a_maildir_account_no_server_keys",
        "tests/test_account_display.py::test_add_account_help_names_every_after_import_value",
    ),
    87: tests(f"{PUSH_SCALE}::test_fifty_push_accounts_import_over_their_idle_connections_on_a_fixed_set_of_threads"),
    88: tests(
        f"{PUSH_SCALE}::test_a_sighup_that_changes_one_account_touches_only_its_connection_and_says_what_changed",
        "tests/test_schedules.py::test_accounts_sharing_a_schedule_are_spread_over_its_period",
    ),
    89: tests(f"{PUSH_SCALE}::test_a_server_that_refuses_a_session_shows_in_status_with_its_words_and_is_retried"),
    58: tests(
        "tests/test_file_modes.py::test_with_umask_000_the_daemon_creates_nothing_others_can_read",
        "tests/test_file_modes.py::test_in_a_setgid_data_directory_the_group_may_read_and_others_still_not",
    ),
    61: tests(
        "tests/test_accounts_remove.py::test_remove_takes_only_that_entry_out_of_a_shared_file_and_keeps_the_comments",
        "tests/test_accounts_remove.py::test_removing_the_first_and_then_the_last_entries_leaves_the_file_and_then_deletes_it",
    ),
    62: tests(
        "tests/test_search_and_status_counts.py::test_a_word_colon_word_that_is_no_column_searches_the_words",
        "tests/test_search_and_status_counts.py::test_a_poll_that_stored_messages_and_then_lost_its_connection_counts_them",
        "tests/test_search_and_status_counts.py::test_status_shows_a_pipe_accounts_last_delivery_and_counts_them",
        # the masking of secrets in 'accounts show'/'accounts list --json' (t14a's part of 13.10):
        "tests/test_account_display.py::test_accounts_show_and_list_json_never_print_a_client_secret_or_the_password_command",
        # the burst of SIGHUPs (t19a's part of 13.10):
        f"{PUSH_SCALE}::test_a_burst_of_sighups_makes_no_extra_logins_and_does_not_bypass_backoff",
    ),
    69: tests(
        "tests/test_autoreply_policy.py::test_an_out_of_office_answer_to_our_reply_joins_the_ticket_and_leaves_it_pending",
        "tests/test_autoreply_policy.py::test_an_out_of_office_answer_to_nothing_we_know_is_a_closed_auto_reply_ticket",
        "tests/test_autoreply_policy.py::test_automatic_mail_that_is_not_an_answer_still_opens_a_ticket",
        "tests/test_demo.py::test_the_demo_runs_with_two_commands_and_lists_its_tickets",
    ),
    91: tests(
        "tests/test_pipeline.py::test_the_next_batch_is_fetched_while_this_one_is_used_never_more_than_one_ahead",
        "tests/test_pipeline.py::test_a_fetch_error_comes_after_the_batches_fetched_before_it_and_closing_stops_the_thread",
        "tests/test_pipeline.py::test_batches_are_committed_in_uid_order_and_the_watermark_follows",
    ),
    90: tests(
        "tests/test_batch_durability.py::test_sigkill_before_a_batch_is_made_durable_leaves_no_file_at_a_content_address_and_the_next_poll_stores_once",
        "tests/test_batch_durability.py::test_pending_files_appear_at_their_content_address_only_once_made_durable",
        "tests/test_batch_durability.py::test_pending_files_of_a_process_that_is_gone_are_swept",
    ),
    98: tests(
        "tests/test_metrics.py::test_after_real_polls_the_metrics_say_what_was_imported_queued_quarantined_and_why_each_account_failed",
        "tests/test_metrics.py::test_failure_causes_of_the_errors_a_poll_can_end_with",
    ),
    99: tests(
        "tests/test_metrics.py::test_the_daemon_writes_the_textfile_and_an_unwritable_directory_is_an_alert_while_polling_goes_on",
        "tests/test_metrics.py::test_status_prometheus_before_any_database_prints_the_zeros_of_an_empty_one",
        "tests/test_metrics.py::test_label_values_and_help_are_escaped_as_the_format_says",
    ),
    100: tests(
        "tests/test_object_storage.py::test_a_bucket_that_is_down_fails_the_poll_and_the_next_poll_imports_every_mail_once",
        "tests/test_object_storage.py::test_a_poll_puts_attachments_in_the_bucket_by_sha256_and_reads_them_back_checked",
    ),
    101: tests(
        "tests/test_object_storage.py::test_a_poll_puts_attachments_in_the_bucket_by_sha256_and_reads_them_back_checked",
    ),
    95: tests(
        "tests/test_hooks.py::test_a_target_that_is_down_gets_the_event_later_exactly_once",
        "tests/test_hooks.py::test_a_hook_target_that_hangs_delays_neither_the_polls_nor_the_outbox",
        "tests/test_hooks.py::test_a_command_that_hangs_is_killed_at_its_time_limit",
    ),
    96: tests(
        "tests/test_hooks.py::test_a_new_ticket_from_a_real_mail_reaches_a_signed_webhook_and_a_command_hook",
        "tests/test_hooks.py::test_a_broken_hook_is_one_line_naming_it",
        "tests/test_hooks.py::test_http_is_allowed_to_loopback_and_two_hooks_may_not_share_a_name",
    ),
    97: tests(
        "tests/test_hooks.py::test_an_account_failing_and_recovering_is_one_event_each_not_one_per_poll",
    ),
    92: tests("tests/test_accounts_cli.py::test_a_name_another_secret_is_kept_under_is_refused_everywhere"),
    106: tests(
        "tests/test_search_query.py::test_the_parser_refuses_exactly_what_fts5_refuses",
        "tests/test_search_query.py::test_snippets_mark_the_same_words_in_the_same_window_as_fts5",
        "tests/test_search_query.py::test_postgresql_finds_the_same_messages_as_fts5",
        "tests/test_search_postgresql.py::test_letters_beyond_ascii_are_folded_in_a_database_with_the_c_locale",
        "tests/test_search_postgresql.py::test_a_word_longer_than_postgresql_indexes_is_a_one_line_usage_error",
    ),
    107: tests(
        "tests/test_search_postgresql.py::test_a_body_beyond_what_a_tsvector_holds_is_stored_whole_and_found_by_its_start",
        "tests/test_sla.py::test_each_new_ticket_gets_due_times_from_its_priority_and_account",
        "tests/test_search_postgresql.py::test_messages_stored_before_the_search_step_are_indexed_when_the_schema_is_upgraded",
        "tests/test_search_postgresql.py::test_a_trigger_dropped_by_hand_is_recreated_by_the_next_poll_and_the_index_rebuilt",
        "tests/test_search_postgresql.py::test_a_search_reads_its_windows_the_two_ways_it_means_to",
    ),
    112: tests(
        "tests/test_leases.py::test_a_lease_is_held_by_one_daemon_until_it_expires_then_taken_over_with_a_new_epoch",
        "tests/test_leases.py::test_eight_daemons_asking_at_once_never_both_win",
        "tests/test_leases.py::test_accounts_spread_over_the_live_daemons_and_a_dead_ones_are_taken_over",
        "tests/test_daemons_shared.py::test_two_daemons_share_four_accounts_and_one_takes_over_a_killed_ones",
    ),
    113: tests(
        "tests/test_leases.py::test_a_stale_holders_batch_is_refused_inside_its_transaction_and_nothing_is_stored_twice",
        "tests/test_kill_shared.py::test_three_daemons_six_accounts_random_kills_and_cut_connections_lose_and_duplicate_nothing",
    ),
    114: tests(
        "tests/test_leases.py::test_a_daemon_that_cannot_renew_stops_touching_its_accounts_before_they_may_expire",
        "tests/test_daemons_shared.py::test_a_paused_daemon_stops_touching_its_accounts_and_its_stale_work_is_refused",
        "tests/test_leases.py::test_a_session_the_server_ends_mid_transaction_never_lets_later_statements_commit_alone",
    ),
    115: tests(
        "tests/test_leases.py::test_a_group_wide_job_runs_once_per_period_whichever_daemon_asks",
        "tests/test_leases.py::test_status_lists_the_daemon_with_the_accounts_it_holds_and_a_clean_stop_gives_them_back",
    ),
    102: tests(
        "tests/test_pg_engine.py::test_a_new_postgresql_database_has_every_table_and_column_of_a_new_sqlite_one",
        "tests/test_pg_engine.py::test_processes_creating_the_schema_at_the_same_moment_all_succeed_and_it_is_made_once",
    ),
    103: tests(
        "tests/test_pg_engine.py::test_a_password_in_the_database_url_is_refused_without_being_repeated",
        "tests/test_pg_engine.py::test_the_database_password_comes_from_the_keyring_or_the_password_command_and_a_wrong_one_says_where_it_goes",
        "tests/test_pg_engine.py::test_libpqs_own_password_file_is_used_when_mail2ticket_has_none",
        "tests/test_accounts_cli.py::test_a_name_another_secret_is_kept_under_is_refused_everywhere",
    ),
    104: tests(
        "tests/test_pg_engine.py::test_a_connection_lost_in_the_middle_of_an_import_stores_nothing_and_the_next_poll_imports_each_once",
    ),
    105: tests(
        "tests/test_pg_engine.py::test_write_transactions_wait_for_each_other_as_on_sqlite_and_a_timeout_is_a_temporary_failure",
        "tests/test_pg_engine.py::test_an_older_postgresql_schema_is_upgraded_step_by_step_and_keeps_its_rows",
    ),
    110: tests(
        "tests/test_pipeline.py::test_a_message_for_a_worker_that_died_idle_goes_to_another_worker_not_to_the_quarantine",
        "tests/test_pipeline.py::test_closing_the_pool_ends_a_message_that_a_dead_idle_worker_never_got",
    ),
    111: tests(
        "tests/test_object_storage.py::test_the_s3_server_listens_below_the_ephemeral_port_range",
        "tests/test_smtp.py::test_the_plain_smtp_server_listens_below_the_ephemeral_port_range",
        "tests/test_parse_pathological.py::test_a_large_attachment_within_the_limits_is_kept_with_bounded_memory",
        "tests/test_network_faults.py::test_a_stalled_server_times_out_quickly_with_a_clear_error",
        "tests/test_secrets.py::test_without_any_keyring_backend_the_daemon_exits_at_once_with_one_actionable_line",
        "tests/test_push_scale.py::test_a_sighup_that_changes_one_account_touches_only_its_connection_and_says_what_changed",
    ),
    108: tests(
        "tests/test_db_copy.py::test_a_polled_database_is_copied_to_postgresql_through_a_kill_and_reads_the_same_there",
        "tests/test_db_copy.py::test_a_large_raw_message_is_copied_in_bounded_memory_and_a_row_changed_since_is_found",
        "tests/test_db_copy.py::test_two_copies_into_one_database_never_copy_a_row_twice",
    ),
    109: tests(
        "tests/test_db_copy.py::test_a_polled_database_is_copied_to_postgresql_through_a_kill_and_reads_the_same_there",
    ),
    116: tests(
        "tests/test_attachments_in_database.py::test_with_postgresql_and_no_location_attachments_go_into_the_database_once_and_come_back_checked",
        "tests/test_attachments_in_database.py::test_an_explicit_attachments_location_keeps_its_meaning_on_postgresql",
        "tests/test_attachments_in_database.py::test_db_copy_puts_the_default_directorys_attachments_into_the_database_checked",
    ),
    120: tests(
        "tests/test_outbox_shared.py::test_three_processes_send_one_outbox_at_once_each_mail_exactly_once_without_the_writers_lock",
        "tests/test_outbox_shared.py::test_a_daemon_killed_after_the_servers_250_has_its_mail_sent_once_more_as_soon_as_its_heartbeat_expires",
        "tests/test_outbox_shared.py::test_a_live_daemons_claim_is_never_taken_however_old",
        "tests/test_outbox_shared.py::test_a_sender_taken_for_dead_never_overwrites_the_new_claim_but_a_send_it_made_is_recorded",
    ),
    121: tests(
        "tests/test_daemons_shared.py::test_a_poll_from_cron_runs_the_overdue_check_once_per_period_for_the_whole_group",
    ),
    122: tests(
        "tests/test_daemons_shared.py::test_a_poll_right_after_a_killed_poll_takes_its_lease_over_at_once",
    ),
    123: tests(
        "tests/test_outbox.py::test_a_live_senders_own_leftover_claim_is_sent_by_its_next_pass",
    ),
    126: tests(
        "tests/test_tickets_cli.py::test_every_page_is_its_slice_of_the_whole_listing_in_every_order",
        "tests/test_tickets_cli.py::test_a_ticket_without_mail_comes_last_by_date_and_first_reversed_on_both_engines",
        "tests/test_tickets_cli.py::test_count_by_lists_ties_in_the_order_of_the_value_none_first_on_both_engines",
    ),
    117: tests("tests/test_daemon.py::test_a_killed_daemon_is_reported_as_not_running"),
    128: tests("tests/test_tickets_cli.py::test_a_lost_database_connection_no_caller_caught_is_a_temporary_failure"),
    127: tests(
        "tests/test_outbox.py::test_a_mail_the_server_accepted_is_recorded_not_sent_again_after_a_cut_connection",
        "tests/test_outbox.py::test_recording_a_send_does_not_wait_for_the_writers_lock",
    ),
    125: tests("tests/test_daemon.py::test_mail_that_came_while_a_poll_had_the_connection_is_announced_when_idle_starts_again"),
    124: tests(
        "tests/test_search.py::test_a_search_ranks_only_the_newest_matches",
        "tests/test_search.py::test_the_bound_counts_matches_of_tickets_that_pass_the_filters",
        "tests/test_search_postgresql.py::test_a_search_reads_its_windows_the_two_ways_it_means_to",
        "tests/test_tickets_cli.py::test_a_table_lists_brief_ticket_objects_that_show_the_same",
        "tests/test_plain_tables.py::test_cells_that_need_it_are_folded_measured_and_cut",
    ),
}


def named_files() -> list[str]:
    return sorted({i.split("::")[0] for e in CATALOGUE.values() if isinstance(e, Tests) for i in e.ids})


def _without_group(nodeid: str) -> str:
    """pytest-xdist's loadgroup names a grouped test ``nodeid@group`` in the workers
    (tests/parallel.py); a parameter may hold an @ too (``[ann@example.com]``)."""
    base, at, group = nodeid.rpartition("@")
    return base if at and not any(c in group for c in "]/:[") else nodeid


@pytest.fixture(scope="module")
def collected(request: pytest.FixtureRequest) -> set[str]:
    """Every node id pytest collects from the files the table names."""
    files = named_files()
    ids = {_without_group(item.nodeid) for item in request.session.items}
    if {nodeid.split("::")[0] for nodeid in ids} >= set(files):
        return ids
    missing = [f for f in files if not (REPO / f).exists()]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *[f for f in files if f not in missing]],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return {line.strip() for line in result.stdout.splitlines() if "::" in line}


def test_every_catalogue_item_has_tests_or_a_reason():
    assert set(ITEMS) <= set(CATALOGUE), "items missing from the table"
    assert min(CATALOGUE) >= 1, "item numbers start at 1"
    for item, entry in CATALOGUE.items():
        if isinstance(entry, Tests):
            assert entry.ids, f"item {item}: no test named"
        else:
            assert entry.reason.strip(), f"item {item}: {type(entry).__name__} without a reason"
    pending = {item: e.reason for item, e in CATALOGUE.items() if isinstance(e, Pending)}
    assert pending == {}, f"catalogue items without a test (figure 16: CI fails while any is missing): {pending}"


def test_an_item_is_out_of_scope_only_with_a_one_line_reason():
    for item, entry in CATALOGUE.items():
        if isinstance(entry, OutOfScope):
            assert "\n" not in entry.reason.strip() and len(entry.reason) <= 200, f"item {item}: {entry.reason!r}"


def test_every_test_the_catalogue_names_exists(collected):
    bases = {nodeid.split("[")[0] for nodeid in collected}
    absent = [
        f"item {item}: {nodeid}"
        for item, entry in CATALOGUE.items() if isinstance(entry, Tests)
        for nodeid in entry.ids
        if nodeid not in (collected if "[" in nodeid else bases)
    ]
    assert absent == []
