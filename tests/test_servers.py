"""The test servers themselves: if these fail, every integration test's verdict is suspect."""

from __future__ import annotations

import base64
import datetime as dt
import os
import smtplib
import socket
import ssl
from pathlib import Path

import imapclient
import pytest
from imapclient.exceptions import IMAPClientAbortError

from tests.servers import (
    DOVECOT_MISSING,
    CertificateAuthority,
    Dovecot,
    SmtpServer,
    TcpRelay,
    User,
    missing_dependency,
)

RAW = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: support@example.test\r\n"
    b"Subject: =?utf-8?q?Caf=C3=A9?= printer\r\n"
    b"Message-ID: <printer-1@example.test>\r\n"
    b"Content-Type: text/plain; charset=latin-1\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"The printer in the caf\xe9 is on fire.\r\n"
    b"..and a line that starts with dots\r\n"
)


def message(n: int) -> bytes:
    return b"Subject: message %d\r\nMessage-ID: <m%d@example.test>\r\n\r\nbody %d\r\n" % (n, n, n)


# ----------------------------------------------------------------------------- TLS and login


def test_imaps_login_verified_with_the_test_ca_works(dovecot: Dovecot, imap_user: User) -> None:
    with dovecot.connect(imap_user) as imap:
        assert isinstance(imap.socket(), ssl.SSLSocket)
        assert imap.select_folder("INBOX")[b"EXISTS"] == 0


def test_imaps_verified_against_another_ca_fails_with_an_ssl_error(
    dovecot: Dovecot, other_ca_file: Path
) -> None:
    context = ssl.create_default_context(cafile=str(other_ca_file))
    with pytest.raises(ssl.SSLCertVerificationError):
        imapclient.IMAPClient(dovecot.host, dovecot.imaps_port, ssl_context=context, timeout=5)


def test_starttls_login_works_on_the_plain_port(dovecot: Dovecot, imap_user: User) -> None:
    with dovecot.connect(imap_user, starttls=True) as imap:
        assert isinstance(imap.socket(), ssl.SSLSocket)
        assert imap.select_folder("INBOX")[b"EXISTS"] == 0


def test_the_plain_port_offers_starttls(dovecot: Dovecot) -> None:
    imap = imapclient.IMAPClient(dovecot.host, dovecot.starttls_port, ssl=False, timeout=5)
    try:
        assert b"STARTTLS" in imap.capabilities()
    finally:
        imap.shutdown()


def test_users_added_while_dovecot_runs_can_log_in_at_once(dovecot: Dovecot) -> None:
    users = [dovecot.add_user() for _ in range(3)]
    assert len({user.name for user in users}) == 3
    for user in users:
        assert user.email == f"{user.name}@example.test"
        dovecot.connect(user).logout()


def test_a_wrong_password_is_refused(dovecot: Dovecot, imap_user: User) -> None:
    with pytest.raises(imapclient.exceptions.LoginError):
        dovecot.connect(User(imap_user.name, "wrong"))


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_a_missing_dovecot_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(
        outcome,
        match=r"^Dovecot is not installed: run 'sudo apt-get install dovecot-imapd' \(see README, Running the tests\)$",
    ):
        missing_dependency(DOVECOT_MISSING)


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> None:
    """A TLS handshake in memory, no sockets: raises what the client would raise."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = 0
        for side, out, peer_in in ((client_side, c_out, s_in), (server_side, s_out, c_in)):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
            finally:
                peer_in.write(out.read())
        if done == 2:
            return
    raise AssertionError("handshake did not finish")


def test_the_spare_certificates_fail_verification_for_the_right_reason(
    test_ca: CertificateAuthority,
) -> None:
    client = test_ca.client_context()
    _handshake(test_ca.server_context(), client, "127.0.0.1")
    cases = [
        (test_ca.expired_cert(), "127.0.0.1", "expired"),
        (test_ca.wrong_host_cert(), "127.0.0.1", "mismatch"),
        (test_ca.issue("127.0.0.1", untrusted=True), "127.0.0.1", "unable to get local issuer"),
    ]
    for cert, hostname, reason in cases:
        with pytest.raises(ssl.SSLCertVerificationError) as failure:
            _handshake(test_ca.server_context(cert), client, hostname)
        assert reason in failure.value.verify_message.lower()


# -------------------------------------------------------------------------- mailbox content


def test_append_then_fetch_returns_the_same_bytes(dovecot: Dovecot, imap_user: User) -> None:
    when = dt.datetime(2024, 3, 1, 12, 30, tzinfo=dt.UTC)
    uid = dovecot.append(imap_user, RAW, flags=[r"\Flagged"], msg_time=when)
    assert dovecot.uids(imap_user) == [uid]
    assert dovecot.fetch_raw(imap_user) == {uid: RAW}
    assert dovecot.flags(imap_user) == {uid: {r"\Flagged"}}  # fetch_raw did not set \Seen
    with dovecot.connect(imap_user) as imap:
        imap.select_folder("INBOX", readonly=True)
        assert imap.fetch([uid], ["INTERNALDATE"])[uid][b"INTERNALDATE"].astimezone(dt.UTC) == when


def test_append_many_stores_messages_in_order_in_any_folder(
    dovecot: Dovecot, imap_user: User
) -> None:
    dovecot.create_folder(imap_user, "Support/Queue")
    raws = [message(n) for n in range(250)]  # more than one MULTIAPPEND batch
    uids = dovecot.append_many(imap_user, raws, folder="Support/Queue", flags=[r"\Seen"])
    assert uids == list(range(1, 251))
    assert dovecot.fetch_raw(imap_user, "Support/Queue") == dict(zip(uids, raws, strict=True))
    assert set(dovecot.flags(imap_user, "Support/Queue").values()) == {frozenset({r"\Seen"})}
    assert dovecot.uids(imap_user) == []


@pytest.mark.parametrize("folder", ["INBOX", "Archive"])
def test_recreate_folder_changes_uidvalidity_keeps_messages_and_renumbers(
    dovecot: Dovecot, imap_user: User, folder: str
) -> None:
    if folder != "INBOX":
        dovecot.create_folder(imap_user, folder)
    dovecot.append_many(imap_user, [message(n) for n in range(5)], folder=folder)
    with dovecot.connect(imap_user) as imap:
        imap.select_folder(folder)
        imap.delete_messages([1, 2])
        imap.expunge()
        imap.add_flags([4], [r"\Answered"])
    before = dovecot.fetch_raw(imap_user, folder)
    old = dovecot.uidvalidity(imap_user, folder)

    new = dovecot.recreate_folder(imap_user, folder)

    assert new != old
    assert dovecot.uidvalidity(imap_user, folder) == new
    after = dovecot.fetch_raw(imap_user, folder)
    assert list(after) == [1, 2, 3]  # numbered again from 1
    assert sorted(after.values()) == sorted(before.values())
    flagged = [
        raw for uid, raw in after.items() if r"\Answered" in dovecot.flags(imap_user, folder)[uid]
    ]
    assert flagged == [before[4]]


def test_recreate_folder_can_keep_the_uids(dovecot: Dovecot, imap_user: User) -> None:
    uids = dovecot.append_many(imap_user, [message(n) for n in range(3)])
    old = dovecot.uidvalidity(imap_user)
    new = dovecot.recreate_folder(imap_user, keep_uids=True)
    assert new != old
    assert dovecot.uids(imap_user) == uids


def test_recreate_folder_disconnects_a_session_that_has_it_selected(
    dovecot: Dovecot, imap_user: User
) -> None:
    dovecot.append(imap_user, message(1))
    with dovecot.connect(imap_user) as imap:
        old = imap.select_folder("INBOX")[b"UIDVALIDITY"]
        new = dovecot.recreate_folder(imap_user)
        with pytest.raises((IMAPClientAbortError, OSError)):
            imap.noop()
            imap.search("ALL")
    assert new != old


def test_account_config_points_at_the_test_servers(
    dovecot: Dovecot, imap_user: User, smtp_server: SmtpServer, account_config, test_ca
) -> None:
    config = account_config(imap_user, smtp=smtp_server, folder="Support", ca_file=None)
    assert config == {
        "name": imap_user.name,
        "email": imap_user.email,
        "username": imap_user.email,
        "imap_host": "127.0.0.1",
        "imap_port": dovecot.imaps_port,
        "imap_security": "tls",
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp_server.port,
        "smtp_security": "starttls",
        "folder": "Support",
    }
    assert account_config(imap_user)["ca_file"] == str(test_ca.ca_file)
    assert "smtp_port" not in account_config(imap_user)
    assert smtp_server.users[imap_user.email] == imap_user.password


# --------------------------------------------------------------------------------------- SMTP


def _submit(server: SmtpServer, user: str, password: str, raw: bytes, context) -> None:
    if server.security == "tls":
        client = smtplib.SMTP_SSL(server.host, server.port, context=context, timeout=5)
    else:
        client = smtplib.SMTP(server.host, server.port, timeout=5)
        client.starttls(context=context)
    with client:
        client.login(user, password)
        client.sendmail("alice@example.test", ["bob@example.test", "carol@example.test"], raw)


@pytest.mark.parametrize("fixture", ["smtp_server", "smtps_server"])
def test_smtp_accepts_an_authenticated_message_over_tls(
    request: pytest.FixtureRequest, test_ca: CertificateAuthority, fixture: str
) -> None:
    server: SmtpServer = request.getfixturevalue(fixture)
    server.add_user("alice@example.test", "s3cret")
    _submit(server, "alice@example.test", "s3cret", RAW, test_ca.client_context())
    [received] = server.messages
    assert received.mail_from == "alice@example.test"
    assert received.rcpt_tos == ("bob@example.test", "carol@example.test")
    assert received.auth_user == "alice@example.test"
    assert received.data == RAW
    assert received.message["Message-ID"] == "<printer-1@example.test>"


def test_smtp_refuses_auth_before_starttls(smtp_server: SmtpServer) -> None:
    smtp_server.add_user("alice", "s3cret")
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        credentials = base64.b64encode(b"\0alice\0s3cret").decode()
        code, _ = client.docmd("AUTH", f"PLAIN {credentials}")
        assert code == 530
        with pytest.raises(smtplib.SMTPNotSupportedError):
            client.login("alice", "s3cret")
    assert smtp_server.messages == []


def test_smtp_refuses_mail_without_auth_and_a_wrong_password(
    smtp_server: SmtpServer, test_ca: CertificateAuthority
) -> None:
    smtp_server.add_user("alice", "s3cret")
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as client:
        client.starttls(context=test_ca.client_context())
        client.ehlo()
        assert client.mail("alice@example.test")[0] == 530
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("alice", "wrong")


def test_smtp_fails_the_next_messages_on_demand(
    smtp_server: SmtpServer, test_ca: CertificateAuthority
) -> None:
    smtp_server.add_user("alice", "s3cret")
    context = test_ca.client_context()
    smtp_server.fail_next(2, code=451)
    smtp_server.fail_next(1, code=550, stage="RCPT")
    for expected in (451, 451):
        with pytest.raises(smtplib.SMTPDataError) as failure:
            _submit(smtp_server, "alice", "s3cret", message(1), context)
        assert failure.value.smtp_code == expected
    with pytest.raises(smtplib.SMTPRecipientsRefused):  # its only recipient got the 550
        _submit_to_one(smtp_server, context)
    _submit(smtp_server, "alice", "s3cret", message(2), context)
    assert [m.data for m in smtp_server.messages] == [message(2)]
    assert [(r.stage, r.reply[:3]) for r in smtp_server.rejections] == [
        ("DATA", "451"),
        ("DATA", "451"),
        ("RCPT", "550"),
    ]


def _submit_to_one(server: SmtpServer, context: ssl.SSLContext) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.starttls(context=context)
        client.login("alice", "s3cret")
        client.sendmail("alice@example.test", ["bob@example.test"], message(9))


def test_smtp_stop_refuses_connections_and_start_comes_back_on_the_same_port(
    smtp_server: SmtpServer, test_ca: CertificateAuthority
) -> None:
    smtp_server.add_user("alice", "s3cret")
    context = test_ca.client_context()
    port = smtp_server.port
    idle = smtplib.SMTP(smtp_server.host, port, timeout=5)
    smtp_server.stop()
    with pytest.raises(smtplib.SMTPServerDisconnected):
        idle.noop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((smtp_server.host, port), timeout=5)
    smtp_server.start()
    assert smtp_server.port == port
    _submit(smtp_server, "alice", "s3cret", message(1), context)
    assert len(smtp_server.messages) == 1


# ---------------------------------------------------------------------------------- TCP relay


def _read_all(sock: socket.socket) -> tuple[bytes, str]:
    """Everything the peer sends until it closes: (bytes, "eof" or "reset")."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        return received, "reset"
    return received, "eof"


@pytest.mark.parametrize("reset", [True, False])
def test_relay_cuts_one_connection_at_the_given_offset(
    dovecot: Dovecot, tcp_relay, reset: bool
) -> None:
    relay: TcpRelay = tcp_relay(dovecot.host, dovecot.starttls_port)
    relay.cut_once_at(10, reset=reset)
    with socket.create_connection((relay.host, relay.port), timeout=5) as sock:
        received, end = _read_all(sock)
    assert received == b"* OK [CAPA"  # exactly 10 bytes
    assert end == ("reset" if reset else "eof")
    with socket.create_connection((relay.host, relay.port), timeout=5) as sock:
        greeting = sock.makefile("rb").readline()
    assert greeting.startswith(b"* OK [CAPABILITY") and greeting.endswith(b"\r\n")
    assert (relay.connections, relay.cuts) == (2, 1)


def test_relay_carries_verified_tls_and_cuts_every_connection_mid_session(
    dovecot: Dovecot, imap_user: User, tcp_relay, test_ca: CertificateAuthority
) -> None:
    dovecot.append_many(imap_user, [message(n) * 200 for n in range(20)])
    relay: TcpRelay = tcp_relay(dovecot.host, dovecot.imaps_port)
    context = test_ca.client_context()
    with imapclient.IMAPClient(relay.host, relay.port, ssl_context=context, timeout=5) as imap:
        imap.login(imap_user.email, imap_user.password)
        imap.select_folder("INBOX", readonly=True)
        relay.cut_after(20_000)  # past login, inside the FETCH answer
        with pytest.raises((IMAPClientAbortError, OSError)):
            imap.fetch("1:*", ["BODY.PEEK[]"])
    with pytest.raises((IMAPClientAbortError, OSError, ssl.SSLError)):
        with imapclient.IMAPClient(relay.host, relay.port, ssl_context=context, timeout=5) as imap:
            imap.login(imap_user.email, imap_user.password)
            imap.select_folder("INBOX", readonly=True)
            imap.fetch("1:*", ["BODY.PEEK[]"])
    assert relay.cuts == relay.connections == 2


def test_relay_stall_holds_the_data_until_resume(dovecot: Dovecot, tcp_relay) -> None:
    relay: TcpRelay = tcp_relay(dovecot.host, dovecot.starttls_port)
    relay.stall(after=4)
    with socket.create_connection((relay.host, relay.port), timeout=5) as sock:
        assert sock.recv(100) == b"* OK"
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        relay.resume()
        sock.settimeout(5)
        assert sock.makefile("rb").readline().startswith(b" [CAPABILITY")
    assert relay.cuts == 0


# ------------------------------------------------------------------------------ environment


def test_isolated_env_points_user_state_and_the_keyring_at_tmp_path(
    isolated_env, tmp_path: Path
) -> None:
    import keyring

    for variable in (
        "HOME",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "XDG_STATE_HOME",
        "XDG_CACHE_HOME",
    ):
        assert Path(os.environ[variable]).is_relative_to(tmp_path)
    assert "MAIL2TICKET_CONFIG" not in os.environ
    keyring.set_password("mail2ticket", "alice@example.test", "canary-password")
    assert type(keyring.get_keyring()).__name__ == "PlaintextKeyring"
    assert "[mail2ticket]" in isolated_env.keyring_file.read_text()
    assert keyring.get_password("mail2ticket", "alice@example.test") == "canary-password"
