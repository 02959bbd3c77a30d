"""Import of messages with attachments: attachments in a directory vs in an S3 bucket (moto).

Run from the repository root (needs the s3 extra and moto[server], as the tests do):

    python3 benchmarks/bench_object_storage.py                   # 200 messages, 3 runs each
    python3 benchmarks/bench_object_storage.py --messages 1000 --runs 1

A private Dovecot and moto's S3 server (HTTPS, in this process, on 127.0.0.1) are started; each
message carries two attachments of its own (20 kB and 150 kB). It prints, side by side, the wall
time of `mail2ticket poll` into a fresh database with (1) a local attachment directory, (2) a
fresh bucket, (3) a bucket that already holds every object (a re-import: a HEAD each, no upload).
moto is no real object store (it keeps objects in memory and runs in the benchmark's process):
the figures show the cost of the requests, not of a server's disks or of a network.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import CertificateAuthority, Dovecot  # noqa: E402
from tests.test_object_storage import S3Server  # noqa: E402


def message(i: int, rng: random.Random) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"customer{i % 50}@example.net"
    msg["To"] = "support@example.test"
    msg["Subject"] = f"Scanned documents {i}"
    msg["Message-ID"] = f"<s3bench-{i}@example.net>"
    msg.set_content(f"Please find the documents for case {i} attached.\n")
    for size, name in ((20_000, "letter.pdf"), (150_000, "scan.pdf")):
        msg.add_attachment(rng.randbytes(size), maintype="application", subtype="pdf", filename=f"{i}-{name}")
    return msg.as_bytes()


def config(base: Path, name: str, dovecot: Dovecot, user, attachments: str, s3: S3Server | None) -> Path:
    lines = [f'[storage]\ndatabase = "{name}.db"\nattachments = "{attachments}"\n']
    if s3 is not None:
        lines.append(f'[storage.s3]\nendpoint = "{s3.endpoint}"\nregion = "us-east-1"\naddressing_style = "path"\n'
                     f'ca_file = "{s3.ca_file}"\naccess_key_id = "AKIABENCH"\nsecret_command = "echo bench"\n'
                     f'staging = "{name}.staging"\n')
    lines.append(f'[[accounts]]\nname = "{user.name}"\nemail = "{user.email}"\nimap_host = "127.0.0.1"\n'
                 f'imap_port = {dovecot.imaps_port}\nca_file = "{dovecot.ca_file}"\nacknowledge = false\n'
                 'added_at = "2000-01-01T00:00:00Z"\n')
    path = base / f"{name}.toml"
    path.write_text("\n".join(lines))
    return path


def poll(cfg: Path, env: dict) -> float:
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mail2ticket", "--config", str(cfg), "poll"], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t
    assert done.returncode == 0, done.stderr
    return wall


def fmt(values: list[float], n: int) -> str:
    med = statistics.median(values)
    spread = f" (min {min(values):.2f}, max {max(values):.2f})" if len(values) > 1 else ""
    return f"{med:6.2f} s{spread}   {n / med:6.0f} msg/s"


def bare_uploads(s3: S3Server, bucket: str, msgs: list[bytes]) -> float:
    """The server's own floor: what mail2ticket sends (a HEAD, then a PUT with Content-MD5) for
    each attachment of ``msgs``, from 8 threads of one boto3 client, nothing else."""
    import base64
    import hashlib
    from concurrent.futures import ThreadPoolExecutor
    from email import message_from_bytes, policy

    blobs = [part.get_payload(decode=True) for raw in msgs
             for part in message_from_bytes(raw, policy=policy.default).iter_attachments()]
    client = s3.client()
    client.create_bucket(Bucket=bucket)

    def one(data: bytes) -> None:
        key = "att/" + hashlib.sha256(data).hexdigest()
        try:
            client.head_object(Bucket=bucket, Key=key)
        except client.exceptions.ClientError:
            pass
        client.put_object(Bucket=bucket, Key=key, Body=data,
                          ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode())

    t = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, blobs))
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    base = Path(tempfile.mkdtemp(prefix="m2t-s3bench-"))
    try:
        ca = CertificateAuthority(base / "ca")
        cert = ca.issue("127.0.0.1", "localhost", name="s3")
        s3 = S3Server(cert.cert_file, cert.key_file, ca.ca_file)
        s3.start()
        with Dovecot(ca) as dovecot:
            creds = base / "credentials"
            creds.mkdir()
            env = dict(os.environ, CREDENTIALS_DIRECTORY=str(creds), XDG_DATA_HOME=str(base / "xdg"),
                       PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring")
            user = dovecot.add_user()
            (creds / user.name).write_text(user.password)
            rng = random.Random(1)
            msgs = [message(i, rng) for i in range(args.messages)]
            dovecot.append_many(user, msgs)
            mb = sum(len(m) for m in msgs) / 1e6
            print(f"{args.messages} messages with 2 attachments each ({mb:.1f} MB), {args.runs} run(s) each", flush=True)
            local, fresh, present = [], [], []
            for run in range(args.runs):
                local.append(poll(config(base, f"local{run}", dovecot, user, f"local{run}.files", None), env))
                bucket = f"bench-{run}"
                s3.client().create_bucket(Bucket=bucket)
                fresh.append(poll(config(base, f"s3-{run}", dovecot, user, f"s3://{bucket}/att", s3), env))
                present.append(poll(config(base, f"s3again-{run}", dovecot, user, f"s3://{bucket}/att", s3), env))
                print(f"  run {run + 1}: local {local[-1]:.2f} s, S3 {fresh[-1]:.2f} s, S3 again {present[-1]:.2f} s",
                      flush=True)
            bare = []
            for run in range(args.runs):
                bare.append(bare_uploads(s3, f"bare-{run}", msgs))
            objects = len(s3.keys("bench-0"))
            print()
            print(f"mail2ticket poll of {args.messages} messages, median (min, max):")
            print(f"  attachments in a directory          {fmt(local, args.messages)}")
            print(f"  attachments in a fresh S3 bucket    {fmt(fresh, args.messages)}   ({objects} objects)")
            print(f"  S3 bucket already holding them      {fmt(present, args.messages)}")
            print(f"  floor: boto3 alone, HEAD + PUT of the same {objects} objects, 8 threads   "
                  f"{statistics.median(bare):6.2f} s")
            print(f"  S3 / directory = {statistics.median(fresh) / statistics.median(local):.2f}")
        s3.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
