"""OAuth2 end to end: a local token service, Dovecot taking XOAUTH2 bearer tokens, an SMTP server too.

The token service (device code, authorization code with PKCE, refresh, introspection) runs on
loopback in this module; Dovecot's oauth2 passdb asks its introspection endpoint about each token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import keyring
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from click.testing import CliRunner

from mail2ticket.accounts import oauth
from mail2ticket.cli import cli
from tests.helpers import run_cli, storage_toml
from tests.servers import LOOPBACK, Dovecot, free_port

CLIENT_ID = "mail2ticket-test-client"


class TokenService:
    """A small OAuth2 authorization server: what Microsoft's and Google's endpoints do, on loopback."""

    def __init__(self) -> None:
        self.expires_in = 3600
        self.pending_polls = 2  # device flow: answers "authorization_pending" this many times first
        self.rotate = False
        self.grants: dict[str, str] = {}  # refresh token -> user
        self.access: dict[str, tuple[str, float]] = {}  # access token -> (user, expiry)
        self.codes: dict[str, tuple[str, str, str]] = {}  # code -> (user, challenge, redirect)
        self.devices: dict[str, int] = {}
        self.refreshes = 0
        self.user = ""  # who approves the device code
        self._lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                size = int(self.headers.get("Content-Length", 0))
                form = {k: v[0] for k, v in urllib.parse.parse_qs(self.rfile.read(size).decode()).items()}
                status, answer = service.handle(self.path, form)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _issue(self, user: str, refresh: str | None = None) -> dict:
        token = secrets.token_urlsafe(24)
        self.access[token] = (user, time.monotonic() + self.expires_in)
        if refresh is None or self.rotate:
            if refresh:
                self.grants.pop(refresh, None)
            refresh = secrets.token_urlsafe(24)
            self.grants[refresh] = user
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in,
                "refresh_token": refresh}

    def revoke_all(self) -> None:
        self.grants.clear()
        self.access.clear()

    def authorize(self, url: str, user: str) -> str:
        """What the browser does after the user signed in: the redirect address with a code."""
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        assert query["client_id"] == CLIENT_ID and query["code_challenge_method"] == "S256"
        code = secrets.token_urlsafe(12)
        self.codes[code] = (user, query["code_challenge"], query["redirect_uri"])
        return f"{query['redirect_uri']}/?code={code}&state={query['state']}"

    def handle(self, path: str, form: dict) -> tuple[int, dict]:
        with self._lock:
            if path == "/introspect":  # Dovecot asks: is this bearer token valid, and whose is it?
                user, expiry = self.access.get(form.get("token", ""), ("", 0))
                if user and expiry > time.monotonic():
                    return 200, {"active": True, "username": user.split("@")[0]}
                return 200, {"active": False}
            if form.get("client_id") != CLIENT_ID:
                return 400, {"error": "invalid_client"}
            if path == "/devicecode":
                device = secrets.token_urlsafe(12)
                self.devices[device] = self.pending_polls
                return 200, {"device_code": device, "user_code": "ABCD-EFGH",
                             "verification_uri": f"{self.url}/device", "expires_in": 900, "interval": 0}
            if path != "/token":
                return 404, {"error": "not_found"}
            grant = form.get("grant_type")
            if grant == "urn:ietf:params:oauth:grant-type:device_code":
                left = self.devices.get(form.get("device_code", ""))
                if left is None:
                    return 400, {"error": "expired_token"}
                if left > 0:
                    self.devices[form["device_code"]] = left - 1
                    return 400, {"error": "authorization_pending"}
                del self.devices[form["device_code"]]
                return 200, self._issue(self.user)
            if grant == "authorization_code":
                user, challenge, redirect = self.codes.pop(form.get("code", ""), ("", "", ""))
                verifier = form.get("code_verifier", "")
                digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
                if not user or digest.decode() != challenge or form.get("redirect_uri") != redirect:
                    return 400, {"error": "invalid_grant", "error_description": "bad code or verifier"}
                return 200, self._issue(user)
            if grant == "refresh_token":
                user = self.grants.get(form.get("refresh_token", ""))
                if not user:
                    return 400, {"error": "invalid_grant", "error_description": "AADSTS700082: expired"}
                self.refreshes += 1
                return 200, self._issue(user, form["refresh_token"])
            return 400, {"error": "unsupported_grant_type"}

    def valid(self, token: str) -> str | None:
        user, expiry = self.access.get(token, ("", 0))
        return user if user and expiry > time.monotonic() else None


@pytest.fixture(scope="module")
def tokens() -> TokenService:
    service = TokenService()
    yield service
    service.close()


@pytest.fixture(autouse=True)
def fresh_tokens(tokens):
    tokens.expires_in, tokens.pending_polls, tokens.rotate, tokens.refreshes = 3600, 2, False, 0
    oauth._cache.clear()


@pytest.fixture(scope="module")
def oauth_dovecot(test_ca, tokens, tmp_path_factory):
    """A second Dovecot whose oauth2 passdb validates bearer tokens at the token service."""
    conf_dir = tmp_path_factory.mktemp("oauth2")
    conf_dir.chmod(0o755)
    ext = conf_dir / "dovecot-oauth2.conf.ext"
    ext.write_text(
        f"introspection_mode = post\nintrospection_url = {tokens.url}/introspect\n"
        "username_attribute = username\nactive_attribute = active\nactive_value = true\n"
    )
    ext.chmod(0o644)
    extra = (
        "auth_mechanisms = plain login xoauth2 oauthbearer\n"
        f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {ext}\n}}\n"
    )
    with Dovecot(test_ca, extra_conf=extra) as server:
        yield server


class _XOAuth2Handler:
    def __init__(self, tokens: TokenService) -> None:
        self.tokens = tokens
        self.logins: list[str] = []

    async def auth_XOAUTH2(self, server, args):
        blob = base64.b64decode(args[1]) if len(args) > 1 else await server.challenge_auth("")
        fields = dict(p.split("=", 1) for p in blob.decode().split("\x01") if "=" in p)
        token = fields.get("auth", "").removeprefix("Bearer ")
        user = self.tokens.valid(token)
        if user and user == fields.get("user"):
            self.logins.append(user)
            return AuthResult(success=True, auth_data=user)
        await server.challenge_auth(base64.b64encode(b'{"status":"401"}'), encode_to_b64=False)
        return AuthResult(success=False, handled=False)


@pytest.fixture
def oauth_smtp(test_ca, tokens):
    """An SMTP submission server (STARTTLS, then AUTH XOAUTH2 only) that checks tokens."""
    handler = _XOAuth2Handler(tokens)
    controller = Controller(
        handler, hostname=LOOPBACK, port=free_port(), server_hostname="smtp.example.test",
        tls_context=test_ca.server_context(), require_starttls=True, auth_require_tls=True,
        auth_exclude_mechanism=["LOGIN", "PLAIN"],
    )
    controller.start()
    controller.handler_obj = handler
    yield controller
    controller.stop()


@pytest.fixture
def env(tmp_path, oauth_dovecot, oauth_smtp, tokens):
    main = tmp_path / "etc" / "config.toml"
    main.parent.mkdir()
    main.write_text(storage_toml(main.parent, "../var/m2t.db"))
    user = oauth_dovecot.add_user()
    tokens.user = user.email

    class Env:
        def invoke(self, *args, input=None):
            return run_cli(main, *args, input=input)

        def add(self, name="desk"):
            return self.invoke(
                "add-account", name, "--email", user.email, "--imap-host", LOOPBACK,
                "--imap-port", str(oauth_dovecot.imaps_port), "--smtp-host", LOOPBACK,
                "--smtp-port", str(oauth_smtp.port), "--smtp-security", "starttls",
                "--ca-file", str(oauth_dovecot.ca_file), "--oauth", "--oauth-client-id", CLIENT_ID,
                "--oauth-token-url", f"{tokens.url}/token",
                "--oauth-device-url", f"{tokens.url}/devicecode", "--oauth-scopes", "mail offline_access",
            )

    e = Env()
    e.user, e.main, e.dovecot, e.smtp = user, main, oauth_dovecot, oauth_smtp
    return e


def mail(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "ann@customer.test"
    msg["To"] = "desk@example.test"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{secrets.token_hex(6)}@customer.test>"
    msg.set_content("hello")
    return msg.as_bytes()


def test_add_account_with_oauth_signs_in_by_device_code_and_checks_imap_and_smtp_with_xoauth2(env, tokens):
    result = env.add()
    assert result.exit_code == 0, result.output
    assert f"open {tokens.url}/device and enter the code ABCD-EFGH" in result.stderr
    assert "ok  IMAP sign-in: signed in as" in result.stderr and "(XOAUTH2)" in result.stderr
    assert "ok  SMTP AUTH" in result.stderr
    assert env.smtp.handler_obj.logins == [env.user.email]
    # The refresh token is in the keyring like a password; no password and no token in the file.
    stored = keyring.get_password("mail2ticket", "desk:oauth2")
    assert stored in tokens.grants
    assert keyring.get_password("mail2ticket", "desk") is None
    text = (env.main.parent / "accounts.d" / "desk.toml").read_text()
    assert 'auth = "oauth2"' in text and stored not in text


def test_an_oauth_account_polls_with_a_refreshed_token(env, tokens):
    assert env.add().exit_code == 0
    env.dovecot.append(env.user, mail("Printer on fire"))
    oauth._cache.clear()  # a new process: only the refresh token is known
    result = env.invoke("poll")
    assert result.exit_code == 0, result.output
    assert tokens.refreshes == 1
    tickets = json.loads(env.invoke("tickets", "list", "--json").stdout)
    assert [t["subject"] for t in tickets] == ["Printer on fire"]


def test_an_access_token_is_reused_until_it_nears_expiry_then_refreshed_first(env, tokens):
    assert env.add().exit_code == 0
    from mail2ticket.config.load import load_config

    account = load_config(env.main).account("desk")
    oauth._cache.clear()
    first = oauth.access_token(account)
    assert oauth.access_token(account) == first
    assert tokens.refreshes == 1
    tokens.expires_in = oauth.REFRESH_MARGIN - 1  # every new token is already "about to expire"
    oauth._cache.clear()
    second = oauth.access_token(account)
    third = oauth.access_token(account)
    assert len({first, second, third}) == 3
    assert tokens.refreshes == 3


def test_a_rotated_refresh_token_replaces_the_old_one_in_the_keyring(env, tokens):
    assert env.add().exit_code == 0
    old = keyring.get_password("mail2ticket", "desk:oauth2")
    tokens.rotate = True
    oauth._cache.clear()
    assert env.invoke("accounts", "test", "desk").exit_code == 0
    new = keyring.get_password("mail2ticket", "desk:oauth2")
    assert new != old and new in tokens.grants and old not in tokens.grants


def test_a_revoked_grant_shows_in_status_with_the_command_to_sign_in_again(env, tokens):
    assert env.add().exit_code == 0
    tokens.revoke_all()
    oauth._cache.clear()
    poll = env.invoke("poll")
    assert poll.exit_code != 0
    status = json.loads(env.invoke("status", "--json").stdout)
    error = next(a for a in status["accounts"] if a["name"] == "desk")["last_error"]
    assert "OAuth2 sign-in of account 'desk' has expired or was revoked" in error
    assert "mail2ticket accounts sign-in desk" in error
    # Doing what it says fixes it.
    again = env.invoke("accounts", "sign-in", "desk")
    assert again.exit_code == 0, again.output
    env.dovecot.append(env.user, mail("After the new sign-in"))
    oauth._cache.clear()
    assert env.invoke("poll").exit_code == 0
    status = json.loads(env.invoke("status", "--json").stdout)
    assert next(a for a in status["accounts"] if a["name"] == "desk")["last_error"] is None


def test_a_token_dovecot_does_not_accept_is_an_auth_error_that_says_to_sign_in_again(env, tokens):
    assert env.add().exit_code == 0
    from mail2ticket.config.load import load_config
    from mail2ticket.errors import AuthError
    from mail2ticket.transport.imap import Mailbox

    account = load_config(env.main).account("desk")
    with pytest.raises(AuthError) as caught:
        Mailbox(account, "not-a-token").connect()
    assert "mail2ticket accounts sign-in desk" in caught.value.one_line()


def test_the_authorization_code_flow_works_by_pasting_the_address_back(env, tokens, monkeypatch):
    # Google's way: no device flow for mail; the URL is opened anywhere and the result pasted.
    from mail2ticket.config.accounts import build_account

    account = build_account(env.main, 0, {
        "name": "g", "email": env.user.email, "imap_host": LOOPBACK, "auth": "oauth2",
        "oauth_client_id": CLIENT_ID, "oauth_token_url": f"{tokens.url}/token",
        "oauth_authorize_url": f"{tokens.url}/authorize", "oauth_scopes": "https://mail.google.com/",
    })
    shown: list[str] = []

    def browser(prompt: str) -> str:
        url = next(line.strip() for line in shown if line.strip().startswith(tokens.url))
        return tokens.authorize(url, env.user.email)  # what lands in the address bar

    got = oauth.sign_in(account, shown.append, browser)
    assert tokens.valid(got.access_token) == env.user.email
    assert got.refresh_token in tokens.grants
    assert any("http://localhost/?code=" in line for line in shown)


def test_a_pasted_address_from_another_attempt_is_refused():
    from mail2ticket.errors import AuthError

    with pytest.raises(AuthError, match="another sign-in attempt"):
        oauth.code_from_paste("http://localhost/?code=abc&state=old", "new")
    with pytest.raises(AuthError, match="refused the sign-in: access_denied"):
        oauth.code_from_paste("http://localhost/?error=access_denied&state=new", "new")
    assert oauth.code_from_paste("  abc123  ", "new") == "abc123"


def test_the_sign_in_fails_clearly_when_the_token_service_cannot_be_reached(env, tokens):
    from mail2ticket.config.accounts import build_account
    from mail2ticket.errors import ConnectError

    account = build_account(env.main, 0, {
        "name": "x", "email": env.user.email, "imap_host": LOOPBACK, "auth": "oauth2",
        "oauth_client_id": CLIENT_ID, "oauth_token_url": "http://login.mail2ticket.invalid/token",
        "oauth_device_url": "http://login.mail2ticket.invalid/devicecode",
    })
    with pytest.raises(ConnectError, match="cannot reach the OAuth2 service at login.mail2ticket.invalid"):
        oauth.sign_in(account, lambda _m: None, lambda _p: "")


def test_an_oauth2_account_without_a_client_id_is_a_config_error(tmp_path):
    main = tmp_path / "config.toml"
    main.write_text('[[accounts]]\nname = "o"\nemail = "a@contoso.com"\nprovider = "microsoft365"\nauth = "oauth2"\n')
    result = CliRunner().invoke(cli, ["--config", str(main), "accounts", "list"])
    assert result.exit_code == 3
    assert "oauth_client_id' is required" in result.stderr


