"""Shared pytest fixtures: an isolated user environment, and the real servers of tests/servers.py.

Sections: environment (autouse), TLS, IMAP (Dovecot), SMTP, network faults, desks and daemons. Add new fixtures to
the section they belong to, or start a new section; keep the machinery itself in helper modules.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import engines, parallel
from tests.helpers import DaemonProcess, Desk
from tests.postgres import (
    POSTGRES_MISSING,
    PSYCOPG_MISSING,
    PostgresServer,
    drop_created,
    engine_under_test,
    find_postgres,
    shared_server,
    stop_shared_server,
)
from tests.servers import (
    DOVECOT_MISSING,
    CertificateAuthority,
    Dovecot,
    SmtpServer,
    TcpRelay,
    User,
    account_config,
    find_dovecot,
    missing_dependency,
)

# ------------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class IsolatedEnv:
    """The per-test stand-ins for the user's directories (all under tmp_path)."""

    home: Path
    config_home: Path
    data_home: Path
    state_home: Path
    cache_home: Path

    @property
    def keyring_file(self) -> Path:
        """Where keyrings.alt's PlaintextKeyring keeps the passwords of this test."""
        return self.data_home / "python_keyring" / "keyring_pass.cfg"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> IsolatedEnv:
    """Point every piece of user state (config, data, keyring, HOME) at this test's tmp_path."""
    env = IsolatedEnv(
        home=tmp_path / "home",
        config_home=tmp_path / "xdg-config",
        data_home=tmp_path / "xdg-data",
        state_home=tmp_path / "xdg-state",
        cache_home=tmp_path / "xdg-cache",
    )
    for variable, path in [
        ("HOME", env.home),
        ("XDG_CONFIG_HOME", env.config_home),
        ("XDG_DATA_HOME", env.data_home),
        ("XDG_STATE_HOME", env.state_home),
        ("XDG_CACHE_HOME", env.cache_home),
    ]:
        path.mkdir()
        monkeypatch.setenv(variable, str(path))
    monkeypatch.delenv("MAIL2TICKET_CONFIG", raising=False)
    # A real file keyring; it reads XDG_DATA_HOME on every access, so it lands in data_home.
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring")
    if "keyring.core" in sys.modules:  # forget a backend chosen under another test's environment
        monkeypatch.setattr(sys.modules["keyring.core"], "_keyring_backend", None)
    return env


# --------------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    """A throw-away CA: ca_file, a 127.0.0.1/localhost server cert, an unrelated other_ca_file."""
    return CertificateAuthority(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def other_ca_file(test_ca: CertificateAuthority) -> Path:
    """A CA that signed none of the test servers' certificates."""
    return test_ca.other_ca_file


# -------------------------------------------------------------------------------------- IMAP


@pytest.fixture(scope="session")
def dovecot(test_ca: CertificateAuthority) -> Iterator[Dovecot]:
    """A private Dovecot for the whole session: imaps and STARTTLS ports on 127.0.0.1."""
    if find_dovecot() is None:
        missing_dependency(DOVECOT_MISSING)
    with Dovecot(test_ca) as server:
        yield server


@pytest.fixture
def imap_user(dovecot: Dovecot) -> User:
    """A fresh mail user with an empty INBOX, so tests never see each other's mail."""
    return dovecot.add_user()


@pytest.fixture(name="account_config")
def account_config_fixture(dovecot: Dovecot) -> Callable[..., dict[str, object]]:
    """``account_config(user, smtp=None, **overrides)``: the config keys of an account on Dovecot."""

    def make(user: User, smtp: SmtpServer | None = None, **overrides: object) -> dict[str, object]:
        return account_config(user, dovecot, smtp, **overrides)

    return make


# -------------------------------------------------------------------------------------- SMTP


@pytest.fixture
def smtp_server(test_ca: CertificateAuthority) -> Iterator[SmtpServer]:
    """A fresh SMTP submission server per test: STARTTLS required, then AUTH, then MAIL."""
    with SmtpServer(test_ca, security="starttls") as server:
        yield server


@pytest.fixture
def smtps_server(test_ca: CertificateAuthority) -> Iterator[SmtpServer]:
    """Like smtp_server, but TLS from the first byte (port 465 style)."""
    with SmtpServer(test_ca, security="tls") as server:
        yield server


# ---------------------------------------------------------------------------- network faults


@pytest.fixture
def tcp_relay() -> Iterator[Callable[[str, int], TcpRelay]]:
    """``tcp_relay(host, port)``: a relay to that server which can cut or stall connections."""
    relays: list[TcpRelay] = []

    def make(host: str, port: int) -> TcpRelay:
        relay = TcpRelay(host, port)
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        relay.close()


# -------------------------------------------------------------------------------- PostgreSQL


def pytest_configure(config: pytest.Config) -> None:
    parallel.configure_worker(config)
    config.addinivalue_line(
        "markers", "sqlite_only(reason): the test is about SQLite itself (its file, WAL, a full disk under "
        "the .db); not run when MAIL2TICKET_TEST_ENGINE=postgresql")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With MAIL2TICKET_TEST_ENGINE=postgresql the whole suite (or a directory) is the files of
    tests/engines.py BOTH_ENGINES; a file named on the command line runs whatever its list."""
    if engine_under_test() != "postgresql" or collection_path.suffix != ".py" \
            or not collection_path.name.startswith("test_") or collection_path.name in engines.BOTH_ENGINES:
        return None
    named = {(config.invocation_params.dir / arg.split("::", 1)[0]).resolve() for arg in config.args}
    return None if collection_path.resolve() in named else True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if engine_under_test() != "postgresql":
        return
    for item in items:
        marker = item.get_closest_marker("sqlite_only")
        if marker is not None:
            reason = marker.args[0] if marker.args else marker.kwargs.get("reason", "SQLite only")
            item.add_marker(pytest.mark.skip(reason=f"SQLite only: {reason}"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL for this pytest process (tests/postgres.py): 127.0.0.1, a free port."""
    if find_postgres() is None:
        missing_dependency(POSTGRES_MISSING)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing_dependency(PSYCOPG_MISSING)
    try:
        yield shared_server()
    finally:
        stop_shared_server()


@pytest.fixture(autouse=True)
def test_engine_database(request: pytest.FixtureRequest) -> Iterator[None]:
    """With MAIL2TICKET_TEST_ENGINE=postgresql: the server is up for tests/helpers.py's
    write_config and Desk, and the databases they made are dropped after each test."""
    if engine_under_test() != "postgresql" or request.node.get_closest_marker("sqlite_only"):
        yield
        return
    request.getfixturevalue("postgres_server")
    yield
    drop_created()
    sqlite_files = _sqlite_files(request.getfixturevalue("tmp_path"))
    if sqlite_files:
        pytest.fail(
            f"MAIL2TICKET_TEST_ENGINE=postgresql, but this test made the SQLite database {sqlite_files[0]}: "
            "it ran (partly) on SQLite. Give it its database with tests/helpers write_config, Desk or "
            "open_store (engine_storage for a config of its own), or mark it @pytest.mark.sqlite_only('why')",
            pytrace=False)


def _sqlite_files(root: Path) -> list[Path]:
    """The SQLite database files under ``root`` (by their first 16 bytes, whatever their name)."""
    found = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = Path(folder, name)
            with contextlib.suppress(OSError), open(path, "rb") as f:
                if f.read(16) == b"SQLite format 3\x00":
                    found.append(path)
    return sorted(found)


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database of this test's own: its URL (the password is
    TEST_PASSWORD; the caller puts it where the password chain finds it)."""
    url = postgres_server.new_database()
    yield url
    postgres_server.drop_database(url)


# ------------------------------------------------------------------------ desks and daemons


@pytest.fixture
def desk(tmp_path: Path, dovecot: Dovecot, imap_user: User, smtp_server: SmtpServer, account_config) -> Desk:
    """One installation (tests/helpers.py Desk) on this test's mailbox user and SMTP server."""
    return Desk(tmp_path / "desk", dovecot, imap_user, smtp_server, account_config)


@pytest.fixture
def make_desk(tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, account_config) -> Callable[..., Desk]:
    """make_desk(name, **account_keys): another installation with its own mailbox user."""

    def make(name: str, conversations=None, **account) -> Desk:
        return Desk(tmp_path / name, dovecot, dovecot.add_user(), smtp_server, account_config,
                    conversations=conversations, **account)

    return make


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """start_daemon(main, **kwargs): ``mail2ticket run`` as its own process, killed after the test."""
    started: list[DaemonProcess] = []

    def start(main: Path, **kwargs) -> DaemonProcess:
        proc = DaemonProcess(main, tmp_path, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


# ------------------------------------------------------------------------------ parallel runs


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """The whole suite on every core, one file in this process (tests/parallel.py, README)."""
    parallel.configure(config)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Whole files to one worker each, ``xdist_group`` tests together (tests/parallel.py)."""
    return parallel.make_scheduler(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """Tell each worker the ``--dist`` chosen here (tests/parallel.py configure_worker)."""
    node.workerinput["mail2ticket_dist"] = node.config.option.dist
