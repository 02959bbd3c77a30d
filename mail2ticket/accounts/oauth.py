"""OAuth2 sign-in for IMAP/SMTP: device code or pasted authorization code, tokens kept fresh.

The refresh token lives in the keyring like a password (secrets.store_token); access tokens live in
memory only and are refreshed ``REFRESH_MARGIN`` seconds before they expire. Only the standard
library talks HTTP here, over verified TLS (urllib's default context).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets as pysecrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mail2ticket.accounts import secrets
from mail2ticket.config.accounts import oauth_endpoints
from mail2ticket.config.model import Account
from mail2ticket.errors import AuthError, ConnectError

log = logging.getLogger(__name__)

REFRESH_MARGIN = 300  # seconds: an access token this close to expiry is refreshed before use
DEFAULT_REDIRECT = "http://localhost"
HTTP_TIMEOUT = 30


@dataclass(frozen=True)
class Endpoints:
    """Everything needed to talk to one account's token service."""

    token_url: str
    authorize_url: str | None
    device_url: str | None
    scopes: tuple[str, ...]
    client_id: str
    client_secret: str | None
    redirect_uri: str
    extra_auth_params: tuple[tuple[str, str], ...] = ()


@dataclass
class Tokens:
    access_token: str
    expires_at: float  # time.monotonic() value
    refresh_token: str | None


def endpoints(account: Account) -> Endpoints:
    where = oauth_endpoints(account.to_dict() | {"provider": account.provider})
    return Endpoints(
        token_url=where["token_url"],
        authorize_url=where["authorize_url"],
        device_url=where["device_url"],
        scopes=where["scopes"],
        client_id=account.oauth_client_id,
        client_secret=account.oauth_client_secret,
        redirect_uri=account.oauth_redirect_uri or DEFAULT_REDIRECT,
        extra_auth_params=where["extra"],
    )


# --- HTTP -------------------------------------------------------------------------------------


class OAuthHTTPError(Exception):
    """The token service answered with an OAuth2 error (``error`` is its code)."""

    def __init__(self, error: str, description: str):
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description


def _post(url: str, data: dict[str, str]) -> dict[str, Any]:
    body = urllib.parse.urlencode({k: v for k, v in data.items() if v is not None}).encode()
    request = urllib.request.Request(
        url, data=body, headers={"Accept": "application/json"}, method="POST"
    )
    host = urllib.parse.urlsplit(url).netloc
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        try:
            answer = json.loads(payload)
        except ValueError:
            raise ConnectError(
                f"the OAuth2 service at {host} answered HTTP {exc.code}", "try again later"
            ) from None
        raise OAuthHTTPError(
            str(answer.get("error", f"http_{exc.code}")), str(answer.get("error_description", ""))
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectError(
            f"cannot reach the OAuth2 service at {host}: {reason}",
            "check the network (and any proxy) of this machine",
        ) from None
    try:
        answer = json.loads(payload)
    except ValueError:
        raise ConnectError(f"the OAuth2 service at {host} sent no JSON", "try again later") from None
    if "error" in answer:
        raise OAuthHTTPError(str(answer["error"]), str(answer.get("error_description", "")))
    return answer


def _tokens(answer: dict[str, Any], previous_refresh: str | None = None) -> Tokens:
    if "access_token" not in answer:
        raise AuthError("the OAuth2 service sent no access token", "try the sign-in again")
    return Tokens(
        access_token=str(answer["access_token"]),
        expires_at=time.monotonic() + float(answer.get("expires_in", 3600)),
        refresh_token=answer.get("refresh_token") or previous_refresh,
    )


def _client(ep: Endpoints) -> dict[str, str | None]:
    return {"client_id": ep.client_id, "client_secret": ep.client_secret}


# --- sign-in flows ----------------------------------------------------------------------------


def device_flow(
    ep: Endpoints, echo: Callable[[str], None], *, sleep: Callable[[float], None] = time.sleep
) -> Tokens:
    """RFC 8628: show a code to enter on any device, then poll until the user has approved."""
    assert ep.device_url
    start = _post(ep.device_url, {"client_id": ep.client_id, "scope": " ".join(ep.scopes)})
    uri = start.get("verification_uri_complete") or start.get("verification_uri")
    echo(
        start.get("message")
        or f"On any device, open {uri} and enter the code {start['user_code']}"
    )
    interval = float(start.get("interval", 5))
    deadline = time.monotonic() + float(start.get("expires_in", 900))
    while True:
        try:
            answer = _post(
                ep.token_url,
                {
                    "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                    "device_code": start["device_code"],
                    **_client(ep),
                },
            )
            return _tokens(answer)
        except OAuthHTTPError as exc:
            if exc.error == "authorization_pending":
                pass
            elif exc.error == "slow_down":
                interval += 5
            elif exc.error in ("expired_token", "code_expired"):
                raise AuthError("the sign-in code expired before it was used", "run the sign-in again") from None
            elif exc.error in ("access_denied", "authorization_declined"):
                raise AuthError("the sign-in was declined", "run the sign-in again and approve it") from None
            else:
                raise AuthError(f"the OAuth2 sign-in failed: {exc}", "check the client id and tenant") from None
        if time.monotonic() > deadline:
            raise AuthError("the sign-in code expired before it was used", "run the sign-in again")
        sleep(interval)


def pkce_pair() -> tuple[str, str]:
    verifier = base64.urlsafe_b64encode(pysecrets.token_bytes(48)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    return verifier, challenge.decode()


def authorization_url(ep: Endpoints, state: str, challenge: str, login_hint: str | None = None) -> str:
    assert ep.authorize_url
    params = {
        "client_id": ep.client_id,
        "response_type": "code",
        "redirect_uri": ep.redirect_uri,
        "scope": " ".join(ep.scopes),
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **dict(ep.extra_auth_params),
    }
    if login_hint:
        params["login_hint"] = login_hint
    sep = "&" if "?" in ep.authorize_url else "?"
    return ep.authorize_url + sep + urllib.parse.urlencode(params)


def code_from_paste(text: str, state: str) -> str:
    """The authorization code from what the user pasted: the whole redirect URL, or the code."""
    text = text.strip()
    if not text:
        raise AuthError("nothing was pasted", "paste the address the browser ended on")
    if "code=" not in text and "error=" not in text:
        return text  # the bare code
    query = urllib.parse.urlsplit(text).query or text.split("?", 1)[-1]
    params = urllib.parse.parse_qs(query)
    if "error" in params:
        raise AuthError(
            f"the provider refused the sign-in: {params['error'][0]} "
            f"{params.get('error_description', [''])[0]}".strip(),
            "check the app registration (redirect URI, API permissions) and try again",
        )
    if params.get("state", [state])[0] != state:
        raise AuthError(
            "the pasted address belongs to another sign-in attempt (state differs)",
            "paste the address from this attempt's browser window",
        )
    return params["code"][0]


def code_flow(
    ep: Endpoints, echo: Callable[[str], None], read_line: Callable[[str], str],
    login_hint: str | None = None,
) -> Tokens:
    """Authorization code + PKCE, for a server with no browser: open the URL anywhere, paste back."""
    state = pysecrets.token_urlsafe(16)
    verifier, challenge = pkce_pair()
    echo("Open this address in a browser on any machine and sign in:")
    echo("")
    echo("  " + authorization_url(ep, state, challenge, login_hint))
    echo("")
    echo(
        f"The browser then goes to {ep.redirect_uri}/?code=... and may say it cannot connect: "
        "that is expected. Copy that whole address from the address bar and paste it here."
    )
    code = code_from_paste(read_line("Address (or code)"), state)
    try:
        answer = _post(
            ep.token_url,
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": ep.redirect_uri,
                "code_verifier": verifier,
                **_client(ep),
            },
        )
    except OAuthHTTPError as exc:
        raise AuthError(
            f"the provider did not accept the code: {exc}",
            "codes work once and only for minutes: run the sign-in again",
        ) from None
    return _tokens(answer)


def sign_in(
    account, echo: Callable[[str], None], read_line: Callable[[str], str], *, sleep=time.sleep
) -> Tokens:
    """Run the provider's flow (device code where it allows it for mail, else pasted code)."""
    ep = endpoints(account)
    if ep.device_url:
        tokens = device_flow(ep, echo, sleep=sleep)
    else:
        tokens = code_flow(ep, echo, read_line, login_hint=account.email)
    if not tokens.refresh_token:
        raise AuthError(
            "the provider sent no refresh token, so the sign-in would not last",
            "ask for offline access (Microsoft: the offline_access scope)",
        )
    remember(account, tokens)
    return tokens


# --- keeping tokens fresh ---------------------------------------------------------------------

_cache: dict[tuple[str, str], Tokens] = {}
_lock = threading.Lock()


def _key(account: Account) -> tuple[str, str]:
    return (account.name, account.oauth_client_id or "")


def remember(account: Account, tokens: Tokens) -> None:
    with _lock:
        _cache[_key(account)] = tokens


def forget(account_name: str) -> None:
    with _lock:
        for key in [k for k in _cache if k[0] == account_name]:
            del _cache[key]


def sign_in_again_hint(name: str) -> str:
    return f"run 'mail2ticket accounts sign-in {name}' to sign in again"


def access_token(account: Account) -> str:
    """A valid access token for ``account``, refreshed first when it is close to expiry."""

    with _lock:
        cached = _cache.get(_key(account))
    if cached and cached.expires_at - time.monotonic() > REFRESH_MARGIN:
        return cached.access_token
    refresh = secrets.get_token(account)
    ep = endpoints(account)
    try:
        answer = _post(
            ep.token_url,
            {"grant_type": "refresh_token", "refresh_token": refresh, **_client(ep),
             "scope": " ".join(ep.scopes) or None},
        )
    except OAuthHTTPError as exc:
        if exc.error in ("invalid_grant", "unauthorized_client", "invalid_client"):
            raise AuthError(
                f"the OAuth2 sign-in of account {account.name!r} has expired or was revoked ({exc.error})",
                sign_in_again_hint(account.name),
            ) from None
        raise AuthError(f"refreshing the OAuth2 token of account {account.name!r} failed: {exc}",
                        "try again later") from None
    tokens = _tokens(answer, previous_refresh=refresh)
    if tokens.refresh_token != refresh:  # rotated: keep the new one, the old may stop working
        try:
            secrets.store_token(account.name, tokens.refresh_token)
        except Exception as exc:  # e.g. the token came from read-only systemd credentials
            log.warning("account %s: could not store the renewed refresh token: %s", account.name, exc)
    remember(account, tokens)
    return tokens.access_token
