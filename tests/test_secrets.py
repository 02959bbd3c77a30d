"""Passwords on a desktop and on a headless server: keyring, systemd credentials, password_command (issue 6)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import keyring
import pytest
import tomli_w

from mail2ticket.accounts.secrets import get_password
from mail2ticket.config.load import load_config
from mail2ticket.errors import EXIT_SECRET, SecretError
from tests.helpers import TEST_PASSWORD, engine_under_test, storage_toml

REPO = Path(__file__).resolve().parents[1]


def make_account(tmp_path: Path, name: str = "support", **extra) -> Path:
    main = tmp_path / "etc" / "config.toml"
    main.parent.mkdir(exist_ok=True)
    main.write_text(storage_toml(main.parent, "../var/m2t.db"))
    acc = {"name": name, "email": f"{name}@example.test", "imap_host": "127.0.0.1", **extra}
    (main.parent / "accounts.d").mkdir(exist_ok=True)
    (main.parent / "accounts.d" / f"{name}.toml").write_text(tomli_w.dumps({"accounts": [acc]}))
    return main


def account(main: Path):
    return load_config(main).accounts[0]


@pytest.fixture
def credentials(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "credentials"
    directory.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    return directory


def test_the_keyring_comes_first(tmp_path, credentials):
    marker = tmp_path / "command-ran"
    main = make_account(tmp_path, password_command=f"touch {marker}; echo from-command")
    (credentials / "support").write_text("from-credential\n")
    keyring.set_password("mail2ticket", "support", "from-keyring")
    assert get_password(account(main)) == "from-keyring"
    assert not marker.exists()  # later sources are not even asked


def test_a_systemd_credential_is_used_when_the_keyring_has_no_password(tmp_path, credentials):
    marker = tmp_path / "command-ran"
    main = make_account(tmp_path, password_command=f"touch {marker}; echo from-command")
    (credentials / "support").write_text("from-credential\n")
    assert get_password(account(main)) == "from-credential"  # the trailing newline is not part of it
    assert not marker.exists()


def test_the_password_command_comes_last(tmp_path, credentials):
    main = make_account(tmp_path, password_command="printf 'from-command\\n'")
    assert get_password(account(main)) == "from-command"


def test_a_missing_password_names_the_account_and_every_source_tried(tmp_path, credentials):
    main = make_account(tmp_path)
    with pytest.raises(SecretError) as err:
        get_password(account(main))
    text = err.value.one_line()
    assert "'support'" in text
    assert "keyring" in text
    assert str(credentials / "support") in text and "not found" in text
    assert "password_command (not set)" in text


def test_a_failing_password_command_says_so_without_printing_what_it_wrote(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    main = make_account(tmp_path, password_command="echo half-a-secret; echo 'vault is sealed' >&2; exit 3")
    with pytest.raises(SecretError) as err:
        get_password(account(main))
    text = err.value.one_line()
    assert "'support'" in text and "exit code 3" in text and "vault is sealed" in text
    assert "half-a-secret" not in text


def run_daemon(main: Path, env: dict[str, str], timeout: float = 20) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mail2ticket", "--config", str(main), "run"],
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )
    return proc, time.monotonic() - t0


def test_without_any_keyring_backend_the_daemon_exits_at_once_with_one_actionable_line(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    main = make_account(tmp_path)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc, took = run_daemon(main, {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert proc.returncode == EXIT_SECRET
    # At once: the work of a start-up (figure 13 aims at 2 s; about 1 s of CPU), then the exit,
    # where a daemon that started would go on retrying. The wall clock only guards against a
    # wait: on a busy machine (the suite's other worker) it stretches several times (catalogue 111).
    assert cpu < 3, f"{cpu:.1f} s of CPU"
    assert took < 15, f"{took:.1f} s"
    [line] = proc.stderr.strip().splitlines()  # one line, no traceback, no log noise
    assert line.startswith("Error: ")
    assert "'support'" in line and "no backend" in line
    assert "CREDENTIALS_DIRECTORY" in line and "LoadCredentialEncrypted=" in line and "password_command" in line


def test_with_a_systemd_credential_and_no_keyring_the_daemon_starts(tmp_path, dovecot, imap_user, account_config):
    main = tmp_path / "etc" / "config.toml"
    main.parent.mkdir()
    main.write_text(storage_toml(main.parent, "../var/m2t.db") + '[schedule]\npoll = "1h"\n')
    (main.parent / "accounts.d").mkdir()
    acc = account_config(imap_user)
    (main.parent / "accounts.d" / "a.toml").write_text(tomli_w.dumps({"accounts": [acc]}))
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / acc["name"]).write_text(imap_user.password)  # what LoadCredentialEncrypted= decrypts
    if engine_under_test() == "postgresql":  # the database's password comes the same way
        (creds / "database").write_text(TEST_PASSWORD)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mail2ticket", "--config", str(main), "run"],
        env={**os.environ, "PYTHONPATH": str(REPO), "CREDENTIALS_DIRECTORY": str(creds),
             "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if f"account {acc['name']}: " in line or not line:
                break
        assert any(f"account {acc['name']}: 0 new" in line for line in lines), lines
        proc.terminate()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if engine_under_test() == "postgresql":
        from tests.test_secrets_canary import stored_in_database
        stored = stored_in_database(main.parent)
        assert acc["name"].encode() in stored  # the poll wrote to this database
    else:
        stored = (tmp_path / "var" / "m2t.db").read_bytes()
    assert imap_user.password.encode() not in stored  # the secret is never written to the database
