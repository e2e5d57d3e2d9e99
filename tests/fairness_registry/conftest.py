"""Fixtures: a registry on SQLite (a tmp file) and on a throwaway PostgreSQL 15 cluster.

The PostgreSQL cluster is started once per test session with the Debian server binaries, listening only on
a Unix socket in a private tmp folder (``listen_addresses=''``), with durability switched off for speed,
and stopped with ``pg_ctl stop -m immediate`` at the end. As root, ``initdb`` refuses to run, so the
server commands run as the ``postgres`` user (``runuser``) and its folders belong to that user. Each test
gets the ``fairnode`` database of that cluster emptied. Missing binaries fail the tests in CI
(``CI=true``) and skip them elsewhere.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest
from psycopg import sql
from sqlmodel import Session

from fairness_registry.db import dispose_engines, get_engine, migrate, sqlite_url
from tests.conftest import IN_CI

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"
#: Secret used by the tests (64 bytes of text).
TEST_SECRET = "test-secret-" + "0123456789abcdef" * 4
BACKENDS = ("sqlite", "postgresql")


def _missing(reason: str) -> NoReturn:
    """Fail in CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{reason}; deploy/system-deps.sh should have installed PostgreSQL 15")
    pytest.skip(reason)


def _free_port() -> int:
    """A TCP port number nobody listens on now (names the socket file; nothing binds TCP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway cluster reached through a Unix socket."""

    socket_dir: Path
    port: int

    def url(self, dbname: str) -> str:
        """The SQLAlchemy URL of one database of the cluster."""
        return f"postgresql+psycopg://{PG_USER}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def create_database(self, dbname: str) -> str:
        """Create an empty database and return its URL."""
        with psycopg.connect(
            host=str(self.socket_dir), port=self.port, user=PG_USER, dbname="postgres", autocommit=True
        ) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return self.url(dbname)

    def empty_database(self, dbname: str = "fairnode") -> str:
        """Drop everything in a database (faster than creating a new one) and return its URL."""
        with psycopg.connect(
            host=str(self.socket_dir), port=self.port, user=PG_USER, dbname=dbname, autocommit=True
        ) as connection:
            connection.execute("DROP SCHEMA public CASCADE")
            connection.execute("CREATE SCHEMA public")
        return self.url(dbname)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Start a PostgreSQL 15 cluster for the session (database ``fairnode`` created) and stop it after."""
    initdb, pg_ctl = PG_BIN / "initdb", PG_BIN / "pg_ctl"
    if not (initdb.is_file() and pg_ctl.is_file()):
        _missing(f"PostgreSQL 15 server binaries not found in {PG_BIN}")
    as_user: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        runuser = shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin")
        try:
            owner = pwd.getpwnam(PG_USER)
        except KeyError:
            owner = None
        if runuser is None or owner is None:
            _missing(f"running as root needs runuser and a {PG_USER!r} user to start PostgreSQL")
        as_user = [str(runuser), "-u", PG_USER, "--"]
    # Directly under /tmp (not pytest's 0700 root-owned tmp tree) so the postgres user can reach it, and
    # short enough for the Unix socket path limit.
    root = Path(tempfile.mkdtemp(prefix="fairnode-pg-"))
    data_dir, socket_dir, log_file = root / "data", root / "sock", root / "server.log"
    socket_dir.mkdir()
    if owner is not None:
        for path in (root, socket_dir):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = _free_port()
    try:
        init = subprocess.run(
            [*as_user, str(initdb), "-D", str(data_dir), "-U", PG_USER, "--auth=trust", "--no-sync"],
            capture_output=True,
            text=True,
            check=False,
        )
        if init.returncode != 0:
            pytest.fail(f"initdb failed ({init.returncode}): {init.stderr[-2000:]}")
        options = (
            f"-p {port} -k {socket_dir} -c listen_addresses='' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        start_command = [*as_user, str(pg_ctl), "-D", str(data_dir), "-l", str(log_file), "-o", options]
        start = subprocess.run([*start_command, "-w", "-t", "60", "start"], capture_output=True, text=True, check=False)
        if start.returncode != 0:
            log = log_file.read_text(errors="replace") if log_file.exists() else ""
            pytest.fail(f"pg_ctl start failed ({start.returncode}): {start.stderr}\n{log[-2000:]}")
        server = PostgresServer(socket_dir=socket_dir, port=port)
        server.create_database("fairnode")
        yield server
    finally:
        dispose_engines()
        if (data_dir / "postmaster.pid").exists():
            subprocess.run(
                [*as_user, str(pg_ctl), "-D", str(data_dir), "stop", "-m", "immediate", "-w"],
                capture_output=True,
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=BACKENDS)
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty registry: a new SQLite file, or the emptied database of the session cluster."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path / "registry.db")
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.empty_database()
    yield url
    dispose_engines()  # also closes the pooled connections, so the next test can empty the database


@pytest.fixture
def session(registry_url: str) -> Iterator[Session]:
    """A session on a migrated registry (either backend)."""
    migrate(registry_url)
    with Session(get_engine(registry_url)) as db_session:
        yield db_session
