"""'accounts test NAME' checks an account step by step and says what to do at the first failure."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import tomli_w

from tests.helpers import run_cli, storage_toml
from tests.servers import LOOPBACK, Dovecot


@pytest.fixture
def env(tmp_path, account_config):
    """Write accounts straight into accounts.d/, store their password, and run the CLI."""
    main = tmp_path / "etc" / "config.toml"
    (main.parent / "accounts.d").mkdir(parents=True)
    main.write_text(storage_toml(main.parent, "../var/m2t.db"))

    class Env:
        def invoke(self, *args, input=None):
            return run_cli(main, *args, input=input)

        def account(self, user, smtp=None, password=None, **overrides):
            values = account_config(user, smtp, **overrides)
            path = main.parent / "accounts.d" / f"{values['name']}.toml"
            path.write_text(tomli_w.dumps({"accounts": [values]}))
            if password is not False:
                result = self.invoke(
                    "accounts", "set-password", values["name"], "--password-stdin", "--no-verify",
                    input=(password or user.password) + "\n",
                )
                assert result.exit_code == 0, result.output
            return values["name"]

    return Env()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def test_a_working_account_passes_every_step_and_verbose_shows_each_one(env, imap_user, smtp_server):
    name = env.account(imap_user, smtp_server)
    result = env.invoke("accounts", "test", name, "-v")
    assert result.exit_code == 0, result.output
    steps = [line.split(":")[0] for line in result.stdout.splitlines() if line.startswith("ok  ")]
    assert steps == [
        "ok  IMAP DNS", "ok  IMAP TCP connect", "ok  IMAP TLS handshake", "ok  IMAP capabilities",
        "ok  IMAP sign-in", "ok  IMAP folder INBOX",
        "ok  SMTP DNS", "ok  SMTP TCP connect", "ok  SMTP connect", "ok  SMTP EHLO",
        "ok  SMTP STARTTLS", "ok  SMTP AUTH",
    ]
    assert "issued by mail2ticket test CA" in result.stdout
    assert "all 12 checks passed" in result.stdout


def test_without_verbose_only_the_summary_is_printed(env, imap_user, smtp_server):
    name = env.account(imap_user, smtp_server)
    result = env.invoke("accounts", "test", name)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines() == [
        f"Account {name!r}: all 12 checks passed (IMAP and SMTP sign-in work)."
    ]


def test_an_unresolvable_host_fails_at_the_dns_step(env, imap_user):
    name = env.account(imap_user, imap_host="imap.mail2ticket.invalid")
    result = env.invoke("accounts", "test", name)
    assert result.exit_code == 6
    assert result.stderr.startswith("Error: IMAP DNS: cannot resolve IMAP host 'imap.mail2ticket.invalid'")
    assert "check the host name" in result.stderr


def test_a_closed_port_fails_at_the_tcp_step_after_dns_passed(env, imap_user):
    name = env.account(imap_user, imap_port=closed_port())
    result = env.invoke("accounts", "test", name, "-v")
    assert result.exit_code == 6
    assert "ok  IMAP DNS" in result.stdout
    assert "Error: IMAP TCP connect:" in result.stderr
    assert "refused the connection" in result.stderr


@pytest.mark.parametrize(
    "cert, words",
    [
        ("expired", "has expired: the server's admin must renew it"),
        ("wrong_host", "is not for 127.0.0.1"),
        ("untrusted", "signed by a CA this machine does not trust"),
    ],
)
def test_a_bad_certificate_fails_at_the_tls_step_and_says_which_problem(
    env, imap_user, dovecot, test_ca, cert, words
):
    files = {
        "expired": test_ca.expired_cert,
        "wrong_host": test_ca.wrong_host_cert,
        "untrusted": lambda: test_ca.issue(LOOPBACK, "localhost", untrusted=True),
    }[cert]()
    with Dovecot(test_ca, server_cert=files) as bad:
        name = env.account(imap_user, imap_port=bad.imaps_port)
        result = env.invoke("accounts", "test", name)
    assert result.exit_code == 5, result.output
    assert result.stderr.startswith("Error: IMAP TLS handshake: TLS certificate of 127.0.0.1:")
    assert words in result.stderr


def test_the_wrong_ca_file_is_reported_as_an_untrusted_ca(env, imap_user, other_ca_file):
    name = env.account(imap_user, ca_file=str(other_ca_file))
    result = env.invoke("accounts", "test", name)
    assert result.exit_code == 5
    assert "set ca_file for this account" in result.stderr


def test_a_wrong_password_at_a_provider_with_app_passwords_says_how_to_make_one(env, imap_user):
    # A Gmail account whose servers are the test Dovecot: the hint comes from the preset.
    name = env.account(imap_user, password="my-normal-google-password", provider="gmail")
    result = env.invoke("accounts", "test", name, "-v")
    assert result.exit_code == 4
    assert "ok  IMAP capabilities" in result.stdout
    assert "Error: IMAP sign-in: IMAP login as" in result.stderr
    assert "Gmail needs an app password" in result.stderr
    assert "https://myaccount.google.com/apppasswords" in result.stderr
    assert f"mail2ticket accounts set-password {name}" in result.stderr


def test_a_wrong_password_without_a_provider_gives_the_plain_hint(env, imap_user):
    name = env.account(imap_user, password="wrong")
    result = env.invoke("accounts", "test", name)
    assert result.exit_code == 4
    assert "check the username and password" in result.stderr
    assert "app password" not in result.stderr


def test_a_provider_answer_that_imap_is_disabled_is_recognised(env, dovecot, imap_user):
    # Dovecot's passwd-file can refuse a correct password with a reason (nologin + reason=):
    # the same shape as Gmail's "Your account is not enabled for IMAP use."
    user = dovecot.add_user()
    users_file = Path(dovecot.directory) / "users.d" / user.name
    reason = "\t".join("Your account is not enabled for IMAP use.".split())  # a space would end it
    users_file.write_text(f"{user.name}:{{PLAIN}}{user.password}::::::nologin reason={reason}\n")
    name = env.account(user, provider="gmail")
    result = env.invoke("accounts", "test", name)
    assert result.exit_code == 4, result.output
    assert "not enabled for IMAP use" in result.stderr
    assert "Gmail says IMAP/SMTP is switched off for this mailbox" in result.stderr


def test_a_missing_folder_fails_with_the_folders_that_exist(env, dovecot, imap_user):
    dovecot.create_folder(imap_user, "Tickets")
    name = env.account(imap_user, folder="Helpdesk")
    result = env.invoke("accounts", "test", name, "-v")
    assert result.exit_code != 0
    assert "ok  IMAP sign-in" in result.stdout
    assert "Error: IMAP folder Helpdesk: folder 'Helpdesk' does not exist" in result.stderr
    assert "set folder to one of: INBOX, Tickets" in result.stderr


@pytest.fixture
def plain_smtp_server():
    """A real SMTP server that offers no STARTTLS at all (and AUTH in clear, which we must not use)."""
    from aiosmtpd.controller import Controller

    from tests.servers import free_port

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=free_port(), auth_require_tls=False,
                            server_hostname="plain.test")
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


def test_smtp_without_starttls_is_refused_at_the_starttls_step(env, imap_user, smtp_server, plain_smtp_server):
    name = env.account(imap_user, smtp_server, smtp_port=plain_smtp_server.port, smtp_security="starttls")
    result = env.invoke("accounts", "test", name, "-v")
    assert result.exit_code == 5
    assert "ok  SMTP TCP connect" in result.stdout
    assert "does not offer STARTTLS; refusing to send the password in clear" in result.stderr


def test_a_tls_only_smtp_port_spoken_to_in_clear_fails_at_connect_within_the_timeout(env, imap_user, smtps_server):
    # The account says starttls, but the port wants TLS from the first byte: no greeting comes.
    name = env.account(imap_user, smtps_server, smtp_security="starttls", timeout=2)
    result = env.invoke("accounts", "test", name, "-v")
    assert result.exit_code != 0
    assert "ok  IMAP folder INBOX" in result.stdout
    assert "ok  SMTP TCP connect" in result.stdout
    assert "Error: SMTP connect:" in result.stderr


def test_a_wrong_smtp_password_fails_at_the_auth_step_after_starttls(env, imap_user, smtp_server):
    name = env.account(imap_user, smtp_server)
    smtp_server.users[imap_user.email] = "something else"
    result = env.invoke("accounts", "test", name, "-v")
    assert result.exit_code == 4
    assert "ok  SMTP STARTTLS" in result.stdout
    assert "Error: SMTP AUTH: SMTP login as" in result.stderr


def test_implicit_tls_smtp_reports_the_handshake_as_a_step(env, imap_user, smtps_server):
    name = env.account(imap_user, smtps_server)
    result = env.invoke("accounts", "test", name, "-v")
    assert result.exit_code == 0, result.output
    assert "ok  SMTP TLS handshake" in result.stdout
    assert "SMTP STARTTLS" not in result.stdout


def test_a_missing_secret_is_reported_before_any_connection(env, imap_user):
    name = env.account(imap_user, password=False)
    result = env.invoke("accounts", "test", name)
    assert result.exit_code == 7
    assert result.stderr.startswith(f"Error: secret: no password found for account {name!r}")


def test_add_account_refuses_to_save_an_account_that_fails_a_step(env, imap_user, smtp_server):
    result = env.invoke(
        "add-account", "newdesk", "--email", imap_user.email, "--imap-host", LOOPBACK,
        "--imap-port", str(closed_port()), "--smtp-host", LOOPBACK, "--smtp-port",
        str(smtp_server.port), "--password-stdin", input=imap_user.password + "\n",
    )
    assert result.exit_code == 6
    assert "IMAP TCP connect" in result.stderr
    listed = env.invoke("accounts", "list", "--json")
    assert "newdesk" not in listed.stdout


