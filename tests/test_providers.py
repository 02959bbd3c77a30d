"""'mail2ticket providers': the presets, their sign-in methods and the steps add-account shows."""

from __future__ import annotations

import json

import pytest
import tomli_w
from click.testing import CliRunner

from mail2ticket.cli import cli
from mail2ticket.config.load import load_config
from mail2ticket.config.providers import PRESETS, auth_failure_hint

REQUIRED = {"gmail", "google-workspace", "yahoo", "aol", "icloud", "outlook", "microsoft365",
            "fastmail", "zoho", "gmx"}

# What each provider's own help page says (the page is in the preset's "docs").
EXPECTED = {
    "gmail": ("imap.gmail.com", 993, "tls", "smtp.gmail.com", 465, "tls"),
    "google-workspace": ("imap.gmail.com", 993, "tls", "smtp.gmail.com", 465, "tls"),
    "yahoo": ("imap.mail.yahoo.com", 993, "tls", "smtp.mail.yahoo.com", 465, "tls"),
    "aol": ("imap.aol.com", 993, "tls", "smtp.aol.com", 465, "tls"),
    "icloud": ("imap.mail.me.com", 993, "tls", "smtp.mail.me.com", 587, "starttls"),
    "outlook": ("outlook.office365.com", 993, "tls", "smtp-mail.outlook.com", 587, "starttls"),
    "microsoft365": ("outlook.office365.com", 993, "tls", "smtp.office365.com", 587, "starttls"),
    "fastmail": ("imap.fastmail.com", 993, "tls", "smtp.fastmail.com", 465, "tls"),
    "zoho": ("imap.zoho.com", 993, "tls", "smtp.zoho.com", 465, "tls"),
    "gmx": ("imap.gmx.com", 993, "tls", "mail.gmx.com", 587, "starttls"),
}


def run(*args, input=None):
    return CliRunner().invoke(cli, list(args), input=input)


def test_providers_json_lists_every_required_preset_with_the_interface_fields():
    result = run("providers", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert REQUIRED <= set(rows)
    for name, (ih, ip, isec, sh, sp, ssec) in EXPECTED.items():
        row = rows[name]
        assert (row["imap_host"], row["imap_port"], row["imap_security"]) == (ih, ip, isec), name
        assert (row["smtp_host"], row["smtp_port"], row["smtp_security"]) == (sh, sp, ssec), name
        assert row["sign_in"], name
        assert row["username"], name
        assert row["steps"], name
        assert row["docs"].startswith("https://"), name


@pytest.mark.parametrize("name", ["outlook", "microsoft365"])
def test_microsoft_presets_sign_in_with_oauth2_only_using_the_device_code_flow(name):
    row = next(r for r in json.loads(run("providers", "--json").stdout) if r["name"] == name)
    assert row["sign_in"] == ["oauth2"]
    assert row["oauth_flow"] == "device-code"


@pytest.mark.parametrize("name", ["gmail", "google-workspace"])
def test_google_presets_offer_oauth2_by_pasted_code_because_google_has_no_device_flow_for_mail(name):
    row = next(r for r in json.loads(run("providers", "--json").stdout) if r["name"] == name)
    assert "oauth2" in row["sign_in"] and "app_password" in row["sign_in"]
    assert row["oauth_flow"] == "authorization-code"


def test_the_table_shows_each_preset_on_one_line():
    result = run("providers")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "IMAP", "SMTP", "sign-in"]
    assert any(line.startswith("icloud ") and "smtp.mail.me.com:587 (starttls)" in line for line in lines)
    assert len(lines) == 1 + len(PRESETS)


def write_account(tmp_path, **values):
    main = tmp_path / "config.toml"
    main.write_text("")
    (tmp_path / "accounts.d").mkdir(exist_ok=True)
    (tmp_path / "accounts.d" / f"{values['name']}.toml").write_text(tomli_w.dumps({"accounts": [values]}))
    return load_config(main)


def test_icloud_signs_in_to_imap_with_the_name_part_and_to_smtp_with_the_full_address(tmp_path):
    cfg = write_account(tmp_path, name="apple", email="emilyparker@icloud.com", provider="icloud")
    account = cfg.account("apple")
    assert account.username == "emilyparker"
    assert account.smtp_username == "emilyparker@icloud.com"


def test_an_explicit_username_wins_over_the_icloud_rule(tmp_path):
    cfg = write_account(tmp_path, name="apple", email="e@icloud.com", provider="icloud",
                        username="e@icloud.com")
    assert cfg.account("apple").username == "e@icloud.com"


def test_other_providers_sign_in_with_the_full_address(tmp_path):
    cfg = write_account(tmp_path, name="y", email="desk@yahoo.com", provider="yahoo")
    assert cfg.account("y").username == "desk@yahoo.com"


def test_add_account_shows_the_providers_steps_when_it_asks_for_the_password(tmp_path):
    result = run("--config", str(tmp_path / "c.toml"), "add-account", "y", "--email", "desk@yahoo.com",
                 "--provider", "yahoo", "--password-stdin", "--no-verify", input="app-pw\n")
    assert result.exit_code == 0, result.output
    assert "Yahoo Mail: sign in with app password" in result.stderr
    assert "1. Turn on 2-step verification" in result.stderr
    assert "2. Generate an app password" in result.stderr


def test_add_account_refuses_a_password_for_a_provider_that_only_takes_oauth2(tmp_path):
    result = run("--config", str(tmp_path / "c.toml"), "add-account", "o", "--email", "a@outlook.com",
                 "--provider", "outlook", "--password-stdin", "--no-verify", input="pw\n")
    assert result.exit_code == 2
    assert "accepts no passwords" in result.stderr and "--oauth" in result.stderr


class _Acct:
    def __init__(self, provider, auth="password"):
        self.name, self.provider, self.auth = "desk", provider, auth


def test_the_hint_after_a_refused_password_depends_on_the_provider():
    assert "Gmail needs an app password" in auth_failure_hint(_Acct("gmail"), "[AUTHENTICATIONFAILED] Invalid credentials")
    assert "the provider asks for an app password" in auth_failure_hint(
        _Acct("gmail"), "[ALERT] Application-specific password required: https://support.google.com/accounts/answer/185833"
    )
    assert "sign in with OAuth2" in auth_failure_hint(_Acct("outlook"), "AUTHENTICATE failed.")
    assert "switched off" in auth_failure_hint(_Acct("microsoft365"), "User is authenticated but not connected.")
    assert "switched off" in auth_failure_hint(
        _Acct("microsoft365"), "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."
    )
    assert "accounts sign-in desk" in auth_failure_hint(_Acct("microsoft365", auth="oauth2"), "")
    assert auth_failure_hint(_Acct(None), "no").startswith("check the username and password")
