"""``fairnode users``: add, list, disable, passwd, token, against a real SQLite registry."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlmodel import Session
from typer.testing import CliRunner

from fairness_registry import accounts
from fairness_registry.db import dispose_engines, get_engine
from fairnode.cli import app as cli
from review.app import build_context, create_app
from review.security import verify_password
from tests.review.conftest import csrf_of, review_settings, sign_in, status

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in [k for k in os.environ if k.startswith("FAIRNODE_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "fairnode.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data")}))
    yield path
    dispose_engines()


def _run(config: Path, *args: str, stdin: str | None = None) -> tuple[int, str]:
    result = runner.invoke(cli, ["users", *args, "--config", str(config)], input=stdin)
    return result.exit_code, result.output


def _url(config: Path) -> str:
    return f"sqlite:///{(config.parent / 'data' / 'registry.db').resolve()}"


def test_users_add_list_disable(config: Path) -> None:
    assert _run(config, "add", "alice", "--role", "radiologist", "--password-stdin", stdin="alice-password-1\n") == (
        0,
        "user alice added (radiologist)\n",
    )
    code, out = _run(config, "add", "bob", "--role", "governance", stdin="bob-password-12\nbob-password-12\n")
    assert code == 0, out  # prompted twice
    code, out = _run(config, "list")
    assert code == 0 and "alice" in out and "radiologist" in out and "bob" in out and "governance" in out
    with Session(get_engine(_url(config))) as session:
        alice = accounts.get_user(session, username="alice")
        assert alice is not None and alice.password_hash.startswith("$argon2id$")
        assert verify_password(alice.password_hash, "alice-password-1")[0]
        assert "alice-password-1" not in alice.password_hash

    assert _run(config, "disable", "alice") == (0, "user alice disabled\n")
    code, out = _run(config, "list")
    assert "no (since" in out
    context = build_context(review_settings(), data_dir=config.parent, status=status, registry_url=_url(config))
    client = TestClient(create_app(context))
    token = csrf_of(client.get("/login").text)
    refused = client.post("/login", data={"username": "alice", "password": "alice-password-1", "csrf_token": token})
    assert refused.status_code == 401  # disabled


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("add", "carol", "--role", "surgeon", "--password-stdin"), "carol-pass-12\n", "role 'surgeon' is not known"),
        (("add", "carol", "--role", "admin", "--password-stdin"), "short\n", "at least 10"),
        (("add", "Carol Smith", "--role", "admin", "--password-stdin"), "carol-password-1\n", "is not accepted"),
        (("disable", "nobody"), None, "no user 'nobody'"),
        (("token", "nobody"), None, "no active user 'nobody'"),
    ],
)
def test_users_errors_are_one_line(config: Path, args: tuple[str, ...], stdin: str | None, message: str) -> None:
    code, out = _run(config, *args, stdin=stdin)
    assert code == 2 and message in out and "Traceback" not in out


def test_a_taken_name_is_refused(config: Path) -> None:
    assert _run(config, "add", "dave", "--role", "admin", "--password-stdin", stdin="dave-password-1\n")[0] == 0
    code, out = _run(config, "add", "dave", "--role", "admin", "--password-stdin", stdin="dave-password-1\n")
    assert code == 2 and "exists already" in out


def test_token_and_passwd(config: Path) -> None:
    _run(config, "add", "erin", "--role", "admin", "--password-stdin", stdin="erin-password-1\n")
    code, out = _run(config, "token", "erin", "--label", "prometheus")
    token = out.strip()
    assert code == 0 and len(token) >= 40
    context = build_context(review_settings(), data_dir=config.parent, status=status, registry_url=_url(config))
    client = TestClient(create_app(context))
    assert client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert _run(config, "passwd", "erin", "--password-stdin", stdin="erin-password-2\n") == (
        0,
        "password of erin changed\n",
    )
    sign_in(client, "erin", "erin-password-2")
