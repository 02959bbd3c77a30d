"""Sending: verified TLS (465) or STARTTLS (587), AUTH only when encrypted, no header injection
(issue 5, point 2). Against the real aiosmtpd servers of the test suite."""

from __future__ import annotations

import json

import pytest
import tomli_w
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from mail2ticket.outgoing.compose import Draft, build, header_text
from tests.helpers import Desk, make_mail, open_store
from tests.servers import ephemeral_range, free_port


def test_mail_goes_out_over_starttls_signed_in_with_the_accounts_secret(desk):
    desk.deliver(make_mail("Hello", to=desk.email))
    desk.poll()
    [sent] = desk.smtp.messages
    assert desk.smtp.security == "starttls" and sent.auth_user == desk.email


def test_mail_goes_out_over_implicit_tls(tmp_path, dovecot, imap_user, smtps_server, account_config):
    desk = Desk(tmp_path / "tls", dovecot, imap_user, smtps_server, account_config)
    assert desk.account["smtp_security"] == "tls"
    desk.deliver(make_mail("Hello", to=desk.email))
    desk.poll()
    [sent] = smtps_server.messages
    assert sent.auth_user == desk.email and sent.rcpt_tos == ("ann@customer.test",)


def _rewrite_account(desk: Desk, **changes) -> None:
    import tomllib

    data = tomllib.loads(desk.config.read_text())
    data["accounts"][0].update(changes)
    desk.config.write_text(tomli_w.dumps(data))


def test_an_smtp_server_with_an_untrusted_certificate_gets_nothing(desk, other_ca_file):
    desk.deliver(make_mail("Hello", to=desk.email))
    desk.smtp.stop()
    desk.poll()  # the ticket exists; its acknowledgement waits
    desk.smtp.start()
    _rewrite_account(desk, ca_file=str(other_ca_file))
    result = desk.invoke("outbox", "retry", "--all")
    assert result.exit_code == 1 and "not trusted" in result.stderr
    assert desk.smtp.messages == []


class _PlainRecorder:
    """An SMTP server without STARTTLS that would accept AUTH in clear: it records any attempt."""

    def __init__(self):
        self.auth_attempts = 0
        self.mails = 0

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.auth_attempts += 1
        return AuthResult(success=True)

    async def handle_DATA(self, server, session, envelope):
        self.mails += 1
        return "250 OK"


@pytest.fixture
def plain_smtp():
    recorder = _PlainRecorder()
    port = free_port()  # below the ephemeral range, so no outgoing connection takes it first
    controller = Controller(recorder, hostname="127.0.0.1", port=port, authenticator=recorder.authenticate,
                            auth_require_tls=False, server_hostname="plain.example.test")
    controller.start()
    recorder.port = port
    yield recorder
    controller.stop()


def test_the_plain_smtp_server_listens_below_the_ephemeral_port_range(plain_smtp):
    """Catalogue 111: its port is chosen, then bound by the controller; in the ephemeral range an
    outgoing connection (a parallel run's other worker opens thousands) can take it between."""
    low, _ = ephemeral_range()
    assert plain_smtp.port < low, f"port {plain_smtp.port} is in the ephemeral range (from {low})"


def test_a_server_that_does_not_offer_starttls_never_sees_the_password(desk, plain_smtp):
    desk.deliver(make_mail("Hello", to=desk.email))
    _rewrite_account(desk, smtp_port=plain_smtp.port, smtp_security="starttls")
    desk.poll()
    [entry] = json.loads(desk.ok("outbox", "list", "--json").stdout)
    assert "does not offer STARTTLS" in entry["last_error"]
    assert plain_smtp.auth_attempts == 0 and plain_smtp.mails == 0


def test_a_subject_with_encoded_line_breaks_cannot_add_headers_to_the_acknowledgement(
    tmp_path, dovecot, imap_user, smtp_server, account_config
):
    # The built-in acknowledgement repeats nothing of the mail (item 56); a template that asks for
    # the sender's subject gets it, on one line.
    desk = Desk(tmp_path / "desk", dovecot, imap_user, smtp_server, account_config,
                conversations={"ack_subject": "{tag} {subject}"})
    evil = "=?UTF-8?Q?Hi=0D=0ABcc:_victim@evil.test=0D=0AX-Injected:_yes?="
    desk.deliver(
        b"From: ann@customer.test\r\nTo: " + desk.email.encode() + b"\r\nSubject: " + evil.encode()
        + b"\r\nMessage-ID: <evil.1@customer.test>\r\n\r\nHello\r\n"
    )
    desk.poll()
    [sent] = desk.smtp.messages
    assert sent.rcpt_tos == ("ann@customer.test",)
    head = sent.data.split(b"\r\n\r\n")[0]
    assert b"\r\nBcc:" not in head and b"\r\nX-Injected:" not in head
    assert sent.message["Subject"].endswith("Hi Bcc: victim@evil.test X-Injected: yes")


def test_compose_strips_line_breaks_and_refuses_addresses_with_them(tmp_path):
    db = open_store(tmp_path)
    assert header_text("a\r\nBcc: x\x00\u2028y") == "a Bcc: x y"
    raw = build(db, Draft("support@example.test", ["ann@customer.test"], "Re: a\nBcc: x@evil.test", "Hi"))
    assert raw.count(b"\r\nBcc:") == 0 and b"Subject: Re: a Bcc: x@evil.test\r\n" in raw
    for bad in ("ann@customer.test\r\nBcc: x@evil.test", "ann@customer.test>, <x@evil.test", "no-at-sign"):
        with pytest.raises(ValueError):
            build(db, Draft("support@example.test", [bad], "s", "b"))
