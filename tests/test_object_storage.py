"""Attachments in an S3-compatible bucket (issue 17, point 5; catalogue 100-101).

A standalone S3-compatible server runs in this module on loopback: moto's S3 application served
over HTTPS (a certificate of the tests' CA) by werkzeug, one for the whole module; every request
goes through the real HTTP API with boto3. Real polls from the real Dovecot put attachments in
the bucket under their content addresses, the CLI reads them back checked against their
SHA-256, a changed object is refused, and a bucket that is down during a poll loses nothing and
duplicates nothing.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
import tomli_w
from botocore.config import Config as BotoConfig
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

from mail2ticket.accounts.secrets import delete_password, store_password
from tests.helpers import LONG_AGO, engine_storage, files_mail, rows, run_cli, sha256_hex
from tests.servers import LOOPBACK, ephemeral_range, free_port

REGION = "us-east-1"


class S3Server:
    """moto's S3 over HTTPS on 127.0.0.1; ``requests`` logs (method, path) of every request.
    ``stop`` and ``start`` again keep the port and the objects (moto keeps them in this process)."""

    def __init__(self, cert, key, ca_file: Path):
        self.cert, self.key, self.ca_file = cert, key, ca_file
        self.requests: list[tuple[str, str]] = []
        self.puts_left: int | None = None  # objects it still accepts before it fails (None: no limit)
        self.port = free_port()  # below the ephemeral range: still free when it starts again
        self._app = DomainDispatcherApplication(create_backend_app)
        self._server = None
        self._thread = None

    @property
    def endpoint(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def _logged(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if method == "PUT" and path.count("/") > 1 and self.puts_left is not None:
            if self.puts_left <= 0:  # a server failing mid-poll (MinIO with its disks gone: 503)
                self.requests.append(("PUT refused", path))
                start_response("503 Service Unavailable", [("Content-Type", "application/xml")])
                return [b"<Error><Code>ServiceUnavailable</Code><Message>disks offline</Message></Error>"]
            self.puts_left -= 1
        self.requests.append((method, path))
        return self._app(environ, start_response)

    def start(self) -> None:
        self._server = make_server(LOOPBACK, self.port, self._logged, threaded=True,
                                   ssl_context=(str(self.cert), str(self.key)))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, verify=str(self.ca_file),
                            aws_access_key_id="test", aws_secret_access_key="test",
                            config=BotoConfig(s3={"addressing_style": "path"}))

    def keys(self, bucket: str) -> dict[str, int]:
        """{key: size} of every object in ``bucket``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}

    def puts(self, bucket: str, key: str) -> int:
        return sum(1 for method, path in self.requests if method == "PUT" and path == f"/{bucket}/{key}")


@pytest.fixture(scope="module")
def s3(test_ca):
    files = test_ca.issue(LOOPBACK, "localhost", name="s3")
    server = S3Server(files.cert_file, files.key_file, test_ca.ca_file)
    server.start()
    yield server
    server.stop()


def test_the_s3_server_listens_below_the_ephemeral_port_range(s3):
    """Catalogue 111: stopped and started again on its port (a bucket that is down), the server
    must find that port free. A port of the ephemeral range can be taken meanwhile as the local
    port of any outgoing connection, and a parallel run's other worker opens thousands."""
    low, _ = ephemeral_range()
    assert s3.port < low, f"port {s3.port} is in the ephemeral range (from {low})"


def _desk(root: Path, s3: S3Server, bucket: str, user=None, account_config=None, batch_size=100,
          **s3_keys) -> Path:
    """A config whose attachments go to s3://BUCKET/desk, its secret key in the keyring."""
    root.mkdir(parents=True, exist_ok=True)
    s3.client().create_bucket(Bucket=bucket)
    table = {"endpoint": s3.endpoint, "region": REGION, "addressing_style": "path",
             "ca_file": str(s3.ca_file), "access_key_id": "AKIAMAIL2TICKET", **s3_keys}
    data: dict = {"storage": engine_storage(root, {"database": "m2t.db", "attachments": f"s3://{bucket}/desk",
                                                   "s3": table})}
    if user is not None:
        data["accounts"] = [account_config(user, added_at=LONG_AGO, batch_size=batch_size)]
        store_password(user.name, user.password)
    config = root / "config.toml"
    config.write_text(tomli_w.dumps(data))
    store_password("s3-attachments", "the-secret-key")
    return config


def _mail(n: int, attachments: list[tuple[str, bytes]]) -> bytes:
    return files_mail(n, attachments, "s3")


def _key(sha: str) -> str:
    return f"desk/{sha[:2]}/{sha[2:4]}/{sha}"


def _ok(config: Path, *args: str):
    result = run_cli(config, *args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def test_a_poll_puts_attachments_in_the_bucket_by_sha256_and_reads_them_back_checked(
        tmp_path, s3, dovecot, imap_user, account_config):
    rng = random.Random(17)
    shared, small, large = rng.randbytes(30_000), rng.randbytes(2_000), rng.randbytes(6 * 1024 * 1024 + 123)
    config = _desk(tmp_path, s3, "helpdesk-one", imap_user, account_config)
    # the same file in two mails, and one mail over 8 MiB (parsed from its spool file, its
    # attachment streamed by a parser worker)
    dovecot.append(imap_user, _mail(1, [("report.pdf", shared), ("note.txt", small)]))
    dovecot.append(imap_user, _mail(2, [("report-again.pdf", shared)]))
    dovecot.append(imap_user, _mail(3, [("big.bin", large)]))

    _ok(config, "poll")

    expected = {_key(sha256_hex(d)): len(d) for d in (shared, small, large)}
    assert s3.keys("helpdesk-one") == expected  # content-addressed, the shared file once
    assert s3.puts("helpdesk-one", _key(sha256_hex(shared))) == 1
    assert rows(tmp_path, "select count(*) from messages") == [(3,)]
    assert not [p for p in (tmp_path / "xdg-data").rglob("*") if p.is_file() and p.parent.name != "tmp"
                and len(p.name) == 64], "a staged attachment was left on the local disk"

    tickets = json.loads(_ok(config, "tickets", "list", "--status", "all", "--json", "--sort", "id").stdout)
    shown = json.loads(_ok(config, "tickets", "show", str(tickets[0]["id"]), "--json").stdout)
    atts = shown["messages"][0]["attachments"]
    assert [a["path"] for a in atts] == [f"s3://helpdesk-one/{_key(sha256_hex(d))}" for d in (shared, small)]
    for ticket, number, data in ((tickets[0], "1", shared), (tickets[0], "note.txt", small), (tickets[2], "1", large)):
        out = tmp_path / f"saved-{ticket['id']}-{number}"
        _ok(config, "tickets", "attachment", str(ticket["id"]), number, "-o", str(out))
        assert out.read_bytes() == data
    assert "report.pdf" in _ok(config, "tickets", "attachment", str(tickets[0]["id"])).stdout
    assert f"s3://helpdesk-one/{_key(sha256_hex(large))}" in _ok(config, "tickets", "show", str(tickets[2]["id"])).stdout
    assert "0 changed" in _ok(config, "reparse", "--all").stdout  # reparse reads the stored mail with the bucket

    # A later mail with the same file: looked up, not uploaded again.
    dovecot.append(imap_user, _mail(4, [("report-3.pdf", shared)]))
    _ok(config, "poll")
    assert s3.puts("helpdesk-one", _key(sha256_hex(shared))) == 1
    assert len(s3.keys("helpdesk-one")) == 3

    # An object changed in the bucket is refused, naming the attachment; nothing is written.
    s3.client().put_object(Bucket="helpdesk-one", Key=_key(sha256_hex(small)), Body=b"X" * 2_000)
    out = tmp_path / "tampered"
    result = run_cli(config, "tickets", "attachment", str(tickets[0]["id"]), "note.txt", "-o", str(out))
    assert result.exit_code != 0 and not out.exists()
    error = result.stderr.strip()
    assert len(error.splitlines()) == 1, error
    assert "'note.txt'" in error and "does not match its SHA-256" in error and "restore it" in error
    # ... and so is a missing one.
    s3.client().delete_object(Bucket="helpdesk-one", Key=_key(sha256_hex(small)))
    result = run_cli(config, "tickets", "attachment", str(tickets[0]["id"]), "note.txt", "-o", str(out))
    assert result.exit_code != 0 and not out.exists()
    assert "is missing from the store" in result.stderr and "'note.txt'" in result.stderr


def test_a_bucket_that_is_down_fails_the_poll_and_the_next_poll_imports_every_mail_once(
        tmp_path, s3, dovecot, imap_user, account_config, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries with backoff only make the test slower
    config = _desk(tmp_path, s3, "helpdesk-down", imap_user, account_config, batch_size=2)
    rng = random.Random(5)
    files = [rng.randbytes(10_000 + n) for n in range(4)]
    for n, data in enumerate(files):
        dovecot.append(imap_user, _mail(10 + n, [(f"file-{n}.bin", data)]))

    s3.stop()
    try:
        result = run_cli(config, "poll")
        assert result.exit_code != 0
        assert "attachment store s3://helpdesk-down/desk/ cannot be reached" in result.stderr
        assert "nothing was committed" in result.stderr
        assert rows(tmp_path, "select count(*) from messages") == [(0,)]
        assert rows(tmp_path, "select count(*) from sources") == [(0,)]
        # a mail handed over by an MTA: 75, so that the MTA keeps it and tries again
        piped = _mail(20, [("piped.bin", b"P" * 5_000)])
        result = run_cli(config, "ingest", "--account", imap_user.name, input=piped)
        assert result.exit_code == 75, (result.stdout, result.stderr)
        assert "cannot be reached" in result.stderr
        assert rows(tmp_path, "select count(*) from messages") == [(0,)]
    finally:
        s3.start()

    _ok(config, "poll")
    _ok(config, "poll")  # nothing new: nothing twice
    assert rows(tmp_path, "select count(*) from messages") == [(4,)]
    assert run_cli(config, "ingest", "--account", imap_user.name, input=piped).exit_code == 0  # the MTA's retry
    files.append(b"P" * 5_000)
    assert rows(tmp_path, "select count(*) from messages") == [(5,)]
    assert sorted(r[0] for r in rows(tmp_path, "select sha256 from attachments")) == sorted(map(sha256_hex, files))
    assert s3.keys("helpdesk-down") == {_key(sha256_hex(d)): len(d) for d in files}

    # The bucket fails in the middle of a poll (batches of 2, uploaded as they are parsed): a batch
    # whose upload failed is not committed (those before it may be), the next poll imports the
    # rest once, and what reached the bucket before the failure is not uploaded again.
    more = [rng.randbytes(8_000 + n) for n in range(6)]
    for n, data in enumerate(more):
        dovecot.append(imap_user, _mail(30 + n, [(f"more-{n}.bin", data)]))
    s3.puts_left = 3
    try:
        result = run_cli(config, "poll")
        assert result.exit_code != 0 and "ServiceUnavailable while uploading attachment" in result.stderr, result.stderr
        assert 5 <= rows(tmp_path, "select count(*) from messages")[0][0] < 5 + 6
    finally:
        s3.puts_left = None
    _ok(config, "poll")
    assert rows(tmp_path, "select count(*) from messages") == [(11,)]
    assert rows(tmp_path, "select count(distinct raw_sha256) from messages") == [(11,)]
    assert [s3.puts("helpdesk-down", _key(sha256_hex(d))) for d in more] == [1] * 6
    assert len(s3.keys("helpdesk-down")) == 11


def test_config_check_shows_the_bucket_and_reaches_it_with_each_source_of_credentials(tmp_path, s3, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    config = _desk(tmp_path, s3, "helpdesk-check")
    shown = _ok(config, "config", "check", "--online").stdout
    assert (f"Attachments: s3://helpdesk-check/desk (endpoint {s3.endpoint}, region {REGION}, path-style, "
            f"CA {s3.ca_file}, access key AKIAMAIL2TICKET;") in shown and "; reached" in shown
    data = json.loads(run_cli(config, "config", "check", "--json").stdout)
    assert data["attachments"] == "s3://helpdesk-check/desk"
    assert data["object_store"]["credentials"] == "access key AKIAMAIL2TICKET"

    # The secret key from a command instead of the keyring
    assert delete_password("s3-attachments")
    result = run_cli(config, "config", "check")
    assert result.exit_code == 3 and "no secret key for access key AKIAMAIL2TICKET" in result.stderr
    text = config.read_text().replace('access_key_id = "AKIAMAIL2TICKET"',
                                      'access_key_id = "AKIAMAIL2TICKET"\nsecret_command = "echo from-a-command"')
    config.write_text(text)
    assert "; reached" in _ok(config, "config", "check", "--online").stdout

    # botocore's own chain (here the environment) when no access key is configured; the instance
    # role (a link-local address) is not asked: tests only contact loopback
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    config.write_text("\n".join(line for line in text.splitlines()
                                if not line.startswith(("access_key_id", "secret_command"))))
    result = run_cli(config, "config", "check", "--online")
    assert result.exit_code == 3 and "no credentials" in result.stderr, result.stderr
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-the-environment")
    assert "AWS credential chain" in _ok(config, "config", "check", "--online").stdout

    # TLS is verified: without the private CA the bucket is not reached
    config.write_text("\n".join(line for line in config.read_text().splitlines() if not line.startswith("ca_file")))
    result = run_cli(config, "config", "check", "--online")
    assert result.exit_code == 3 and "TLS failed" in result.stderr and "ca_file" in result.stderr, result.stderr


@pytest.mark.parametrize("storage, error", [
    ({"attachments": "s3://No_Such/x"}, "does not name a valid bucket"),
    ({"attachments": "s3://bucket/a//b"}, "has an empty, '.' or '..' part"),
    ({"attachments": "s3://bucket/p", "s3": {"endpoint": "minio:9000"}}, "'storage.s3.endpoint' = 'minio:9000' is not a URL"),
    ({"attachments": "s3://bucket/p", "s3": {"addressing_style": "dns"}}, "'storage.s3.addressing_style' = 'dns' is not known"),
    ({"attachments": "s3://bucket/p", "s3": {"secret_key": "x"}}, "unknown key 'storage.s3.secret_key'"),
    ({"attachments": "s3://bucket/p", "s3": {"secret_command": "pass s3"}}, "needs 'storage.s3.access_key_id'"),
    ({"attachments": "files", "s3": {"region": "eu-west-1"}}, "[storage.s3] is set but 'storage.attachments' is not"),
])
def test_a_wrong_s3_location_is_one_line_at_load(tmp_path, storage, error):
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps({"storage": storage}))
    result = run_cli(config, "config", "check")
    assert result.exit_code == 3
    assert error in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


HIDE_BOTO3 = "import sys; sys.modules['boto3'] = None; from mail2ticket.cli import main; main()"


def test_without_boto3_an_s3_location_is_one_line_saying_to_install_the_extra(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps({"storage": engine_storage(tmp_path, {"database": "m2t.db",
                                                                          "attachments": "s3://helpdesk/att"})}))
    for args, code in ((["config", "check"], 3), (["reparse", "--all"], 3)):
        done = subprocess.run([sys.executable, "-c", HIDE_BOTO3, "--config", str(config), *args],
                              capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == code, done.stderr
        assert "needs boto3, which is not installed" in done.stderr and "pip install 'mail2ticket[s3]'" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_sweep_removes_files_staged_for_the_bucket_by_a_batch_that_never_came_back(tmp_path):
    from mail2ticket.files.objectstore import ObjectStore

    store = ObjectStore("helpdesk", "desk", tmp_path / "staging", endpoint="https://127.0.0.1:9")
    old, fresh = (tmp_path / "staging" / store.relpath(sha256_hex(d)) for d in (b"old", b"fresh"))
    for path in (old, fresh):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    assert store.sweep_temp() == 1
    assert not old.exists() and fresh.exists()
