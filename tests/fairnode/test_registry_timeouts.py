"""A registry that hangs does not hold the node up: the write gives up within the settings' timeout and the
record is kept for a retry.

PostgreSQL: a loopback socket that listens and never answers (the TCP handshake completes in the kernel's
backlog, the server's start-up reply never comes: what a registry behind a firewall that drops packets, or a
hung server, looks like to the client). SQLite: another writer holding the lock.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from fairness_registry.db import EngineOptions, dispose_engines, get_engine, migrate, sqlite_url
from fairness_registry.settings import RegistrySettings
from fairnode.node import session_factory
from fairnode.registry_pending import PendingRegistry, RetryReport, Written
from tests.fairness_registry.conftest import TEST_SECRET
from tests.fairnode.test_registry_outage import _record

#: What a write may take beyond the timeout (thread start, the record read back, one attempt's bookkeeping).
SLACK_S = 3.0


def _timed(call: Callable[[], object], limit_s: float) -> tuple[object, float]:
    """``call()``'s result and seconds, run in a thread; the test fails if it is not back within ``limit_s``."""
    result: list[object] = []
    start = time.monotonic()
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(limit_s)
    elapsed = time.monotonic() - start
    assert not thread.is_alive(), f"the registry write was still waiting after {elapsed:.1f} s (limit {limit_s} s)"
    assert result, "the registry write raised instead of keeping the record"
    return result[0], elapsed


@pytest.fixture
def silent_postgres() -> Iterator[str]:
    """The URL of a "PostgreSQL server" that accepts TCP connections and never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"postgresql+psycopg://fairnode@127.0.0.1:{listener.getsockname()[1]}/fairnode"
    dispose_engines()


def test_a_registry_that_never_answers_costs_a_write_the_connect_timeout(tmp_path: Path, silent_postgres: str) -> None:
    options = RegistrySettings(connect_timeout_s=2).engine_options()
    pending = PendingRegistry(
        tmp_path / "pending",
        session_factory(silent_postgres, options),
        secret=TEST_SECRET.encode(),
        options=RegistrySettings(),
    )
    folder = pending.keep(_record())
    written, elapsed = _timed(lambda: pending.write(folder), options.connect_timeout_s + SLACK_S)
    assert written is Written.AWAY
    assert elapsed >= options.connect_timeout_s - 0.5, elapsed  # it did wait for the server, as long as allowed
    assert (folder / "record.json").is_file()  # kept for the retry
    last_error = json.loads((folder / "attempts.json").read_text(encoding="utf-8"))["last_error"]
    assert "OperationalError" in last_error and "timeout" in last_error
    # the job runner's retry pass gives up as fast, and keeps it again
    report, elapsed = _timed(pending.retry, options.connect_timeout_s + SLACK_S)
    assert report == RetryReport(written=0, waiting=1, refused=0)


def test_a_locked_sqlite_registry_costs_a_write_the_busy_timeout(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "registry.db")
    options = RegistrySettings(sqlite_busy_timeout_s=0.5).engine_options()
    migrate(url, options)
    pending = PendingRegistry(
        tmp_path / "pending", session_factory(url, options), secret=TEST_SECRET.encode(), options=RegistrySettings()
    )
    folder = pending.keep(_record())
    other = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another writer holds the lock and does not let go
        written, elapsed = _timed(lambda: pending.write(folder), options.sqlite_busy_timeout_s + SLACK_S)
        assert written is Written.AWAY and (folder / "record.json").is_file()
        assert elapsed >= options.sqlite_busy_timeout_s - 0.1, elapsed
        assert "database is locked" in json.loads((folder / "attempts.json").read_text(encoding="utf-8"))["last_error"]
    finally:
        other.rollback()
        other.close()
    assert pending.retry() == RetryReport(written=1, waiting=0, refused=0)  # the lock gone, it is written
    dispose_engines()


def test_registry_timeouts_come_from_the_settings_with_sane_defaults() -> None:
    assert RegistrySettings().engine_options() == EngineOptions(connect_timeout_s=10, sqlite_busy_timeout_s=30.0)
    assert RegistrySettings(connect_timeout_s=4).engine_options().connect_timeout_s == 4
    with pytest.raises(ValidationError, match="connect_timeout_s"):
        RegistrySettings(connect_timeout_s=1)  # libpq's least is 2 s
    with pytest.raises(ValueError, match="at least 2 s"):
        EngineOptions(connect_timeout_s=1)
    with pytest.raises(ValueError, match="above 0 s"):
        EngineOptions(sqlite_busy_timeout_s=0)
    # the engine of the default options is the one a caller without options gets
    url = "postgresql+psycopg://fairnode@127.0.0.1:9/fairnode"
    try:
        assert get_engine(url, RegistrySettings().engine_options()) is get_engine(url)
        assert get_engine(url, EngineOptions(connect_timeout_s=3)) is not get_engine(url)
    finally:
        dispose_engines()
