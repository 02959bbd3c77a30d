"""The README's two commands: ./install and .ci/install-test-deps install into a virtual
environment only, and never leave a system service enabled (issue 14.1).

The scripts are run for real, with the system commands they call (apt-get, dpkg-query,
deb-systemd-helper, systemctl, update-rc.d, sudo, python3) replaced by recorders on PATH: the
test checks what would be done to this machine without installing anything on it. What they do
on a real Debian 12 is in docs/reliability.md (item 63) with the captured output.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

# A recorder for every system command the scripts may call. apt-get "installs" a package by
# creating a file that dpkg-query then reports; python3 -m venv makes a venv whose python is
# the recorder too.
RECORDER = r"""#!/usr/bin/env bash
name=$(basename "$0")
echo "$name $* [PIP_BREAK_SYSTEM_PACKAGES=${PIP_BREAK_SYSTEM_PACKAGES:-}]" >> "$STUB_LOG"
case "$name" in
  sudo) [ "${1:-}" = -n ] && shift; exec "$@" ;;
  dpkg-query) [ -e "$STUB_PKGS/${!#}" ] && echo 'install ok installed'; exit 0 ;;
  apt-get)
    if [ "$1" = install ]; then
      for p in "$@"; do case "$p" in -*|install) ;; *) touch "$STUB_PKGS/$p" ;; esac; done
      [ -e "$STUB_PKGS/dovecot-imapd" ] && touch "$STUB_PKGS/dovecot-core"
      [ -e "$STUB_PKGS/postgresql" ] && touch "$STUB_PKGS/postgresql-common"
    fi ;;
  tee|chmod|rm) cat >/dev/null 2>&1 || true ;;
  # The real one refuses to run outside a maintainer script (exit 1: "was not called from dpkg").
  deb-systemd-helper) [ -n "${DPKG_MAINTSCRIPT_PACKAGE:-}" ] || { echo "$0 was not called from dpkg. Exiting." >&2; exit 1; } ;;
  python|python3)
    if [ "${1:-}" = -m ] && [ "${2:-}" = venv ]; then
      mkdir -p "$3/bin" && cp "$0" "$3/bin/python"
    elif [ "${1:-}" = -c ]; then
      case "$2" in *__version__*) echo 0.0-test ;; esac
    elif [ "${1:-}" = - ]; then
      cat >/dev/null
    fi ;;
esac
exit 0
"""

STUBS = ["sudo", "dpkg-query", "apt-get", "deb-systemd-helper", "systemctl", "update-rc.d", "python3",
         "tee", "chmod", "rm"]


def run_script(tmp_path: Path, script: str, *args: str, preinstalled=()) -> list[str]:
    stubs = tmp_path / "stubs"
    pkgs = tmp_path / "pkgs"
    stubs.mkdir()
    pkgs.mkdir()
    for package in preinstalled:
        (pkgs / package).touch()
    for name in STUBS:
        (stubs / name).write_text(RECORDER)
        (stubs / name).chmod(0o755)
    log = tmp_path / "log"
    log.touch()
    tools = tmp_path / "tools"  # the few real commands the scripts use, and nothing else
    tools.mkdir()
    for name in ("bash", "env", "dirname", "id", "grep", "sed", "cat", "basename", "cp", "mkdir", "touch"):
        (tools / name).symlink_to(shutil.which(name))
    env = {
        "PATH": f"{stubs}:{tools}",
        "HOME": str(tmp_path),
        "STUB_LOG": str(log),
        "STUB_PKGS": str(pkgs),
        "PIP_BREAK_SYSTEM_PACKAGES": "1",  # a user's leftover setting must not leak into the install
    }
    result = subprocess.run(
        [str(ROOT / script), *args], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stderr
    return log.read_text().splitlines()


def test_install_test_deps_keeps_the_system_dovecot_disabled_and_installs_into_a_venv(tmp_path) -> None:
    venv = tmp_path / "venv"
    calls = run_script(tmp_path, ".ci/install-test-deps", "--venv", str(venv), preinstalled=["python3"])

    installs = [c for c in calls if c.startswith("apt-get install")]
    assert len(installs) == 1 and "dovecot-imapd" in installs[0] and "openssl" in installs[0]
    after = calls[calls.index(installs[0]):]
    assert any(re.match(r"deb-systemd-helper disable dovecot.service dovecot.socket", c) for c in after)
    # PostgreSQL too: the tests run their own cluster; the package's would start at the next boot.
    assert "postgresql" in installs[0]
    assert any(re.match(r"deb-systemd-helper disable postgresql.service", c) for c in after)
    assert any(c.startswith("update-rc.d dovecot disable") for c in after) or not Path("/etc/init.d").exists()
    # Nothing is ever enabled or started.
    for call in calls:
        assert not re.match(r"(systemctl|deb-systemd-helper|update-rc.d) .*\b(enable|start|unmask)\b", call), call
        assert "--now" not in call or "disable" in call, call
    # Python packages go into the venv, never into the system Python, never with --break-system-packages.
    pips = [c for c in calls if " -m pip install" in c]
    assert pips and all(c.startswith("python ") for c in pips), pips
    assert any("-e .[test,s3]" in c for c in pips)  # the s3 extra: the object-store tests (docs/storage.md)
    assert not any(c.startswith("python3 -m pip") for c in calls)
    assert all(c.endswith("[PIP_BREAK_SYSTEM_PACKAGES=]") for c in calls), calls
    assert f"python3 -m venv {venv} [PIP_BREAK_SYSTEM_PACKAGES=]" in calls


def test_a_dovecot_installed_before_is_left_as_it_was(tmp_path) -> None:
    # Every package the tests need is there (PostgreSQL too, since issue 17): apt is not touched.
    calls = run_script(
        tmp_path, ".ci/install-test-deps", "--venv", str(tmp_path / "venv"),
        preinstalled=["python3", "dovecot-imapd", "dovecot-core", "openssl", "postgresql", "postgresql-common"],
    )
    assert not any(c.startswith(("apt-get", "deb-systemd-helper", "systemctl", "update-rc.d")) for c in calls), calls


def test_install_without_test_installs_the_package_only(tmp_path) -> None:
    calls = run_script(tmp_path, "install", "--venv", str(tmp_path / "venv"))
    assert not any("dovecot" in c for c in calls), calls
    pips = [c for c in calls if " -m pip install" in c]
    assert [c.split(" [")[0] for c in pips] == ["python -m pip install -q ."]


def _console_commands(section: str) -> list[str]:
    """The '$ ' lines of the console blocks in one README section."""
    body = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\$ (.+)$", body, re.M)


def test_ci_runs_the_readmes_test_command_as_written() -> None:
    (command,) = _console_commands("Running the tests")
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(rf"^{re.escape(command)} \|\| status=\$\?$", ci, re.M), command
    assert command in _console_commands("Quick start")
    # The test command runs pytest from the venv the install script made, not a system python3.
    assert ".venv/bin/python -m pytest" in command


def test_the_quick_start_installs_into_a_venv_and_runs_the_demo() -> None:
    first, _ = _console_commands("Quick start")
    assert first.startswith("./install && ")
    assert "pip install" not in first  # a bare pip install fails on Debian's python3 (PEP 668)
    assert os.access(ROOT / "install", os.X_OK)
