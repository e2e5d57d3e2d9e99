"""Review accounts in the registry, on SQLite and PostgreSQL: users, tokens, the append-only trail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from fairness_registry import accounts, crud
from fairness_registry.accounts import Role
from fairness_registry.db import get_engine, migrate
from review.security import hash_password, hash_token, new_token
from tests.fairness_registry.conftest import TEST_SECRET, postgres_server, registry_url  # noqa: F401 - fixtures

HASH = hash_password("a-long-password")


@pytest.fixture
def db(registry_url: str) -> Iterator[Session]:  # noqa: F811 - the imported fixture
    migrate(registry_url)
    with Session(get_engine(registry_url)) as session:
        yield session


def test_a_name_taken_at_the_same_moment_is_a_duplicate(db: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes (e.g. two receivers on one registry) both saw the name free: the second insert is refused by
    the database's unique name and reported as a duplicate, with the session usable afterwards."""
    accounts.create_user(db, username="root", role=Role.ADMIN, password_hash=HASH)
    monkeypatch.setattr(accounts, "get_user", lambda session, **_: None)  # the check ran before the other insert
    with pytest.raises(accounts.DuplicateUserError, match="'root' exists already"):
        accounts.create_user(db, username="root", role=Role.ADMIN, password_hash=HASH)
    assert accounts.count_users(db) == 1


def test_users_are_created_listed_and_disabled(db: Session) -> None:
    alice = accounts.create_user(db, username="alice", role="radiologist", password_hash=HASH)
    accounts.create_user(db, username="bob", role=Role.ADMIN, password_hash=HASH)
    assert [(u.username, u.role, u.active) for u in accounts.list_users(db)] == [
        ("alice", Role.RADIOLOGIST, True),
        ("bob", Role.ADMIN, True),
    ]
    assert alice.created_at.tzinfo is not None and accounts.count_users(db) == 2
    with pytest.raises(accounts.DuplicateUserError, match="exists already"):
        accounts.create_user(db, username="alice", role="admin", password_hash=HASH)
    with pytest.raises(ValueError, match="role 'chief' is not known; accepted: radiologist, governance, admin"):
        accounts.create_user(db, username="carol", role="chief", password_hash=HASH)
    with pytest.raises(ValueError, match="is not accepted"):
        accounts.create_user(db, username="Carol Smith", role="admin", password_hash=HASH)
    token = new_token()
    assert alice.id is not None
    accounts.add_token(db, user_id=alice.id, token_hash=hash_token(token), label="pacs")
    found = accounts.user_for_token(db, token_hash=hash_token(token))
    assert found is not None and found.username == "alice"
    version = alice.session_version
    disabled = accounts.disable_user(db, username="alice")
    assert (disabled.active, disabled.session_version) == (False, version + 1) and disabled.disabled_at is not None
    assert accounts.user_for_token(db, token_hash=hash_token(token)) is None  # revoked with the user
    with pytest.raises(LookupError, match="no user 'nobody'"):
        accounts.disable_user(db, username="nobody")
    # the CHECK constraint holds even past the crud functions
    with pytest.raises(sa.exc.IntegrityError):
        db.execute(sa.text("UPDATE review_user SET role = 'chief' WHERE username = 'bob'"))
        db.commit()
    db.rollback()


def _case(db: Session) -> int:
    study = crud.record_study(db, study_uid="1.2.3.4", patient_id="P", secret=TEST_SECRET)
    assert study.id is not None
    series = crud.record_series(db, study_id=study.id, series_uid="1.2.3.4.5", modality="CT")
    assert series.id is not None
    case = crud.record_case(db, series_id=series.id, model="m", model_version="1")
    assert case.id is not None
    return case.id


def test_the_trail_is_append_only_and_follows_erasure(db: Session) -> None:
    user = accounts.create_user(db, username="alice", role="radiologist", password_hash=HASH)
    assert user.id is not None
    case_id = _case(db)
    accounts.append_action(db, user_id=user.id, action="accept", case_id=case_id, before={"review_state": "held"})
    accounts.append_action(db, user_id=user.id, action="audit.run", after={"period": "2026Q3"})
    shown = accounts.list_actions(db, case_id=case_id)
    assert [(a.username, a.action, a.before) for a in shown] == [("alice", "accept", {"review_state": "held"})]
    assert [a.action for a in accounts.list_actions(db)] == ["audit.run", "accept"]
    with pytest.raises(ValueError, match="action 'Accept!' is not accepted"):
        accounts.append_action(db, user_id=user.id, action="Accept!")
    with pytest.raises(sa.exc.DatabaseError, match="append-only"):
        db.execute(sa.text("UPDATE review_action SET detail = 'edited'"))
        db.commit()
    db.rollback()
    with pytest.raises(sa.exc.IntegrityError):  # a user with a trail cannot be deleted, only disabled
        db.execute(sa.text("DELETE FROM review_user WHERE id = :id"), {"id": user.id})
        db.commit()
    db.rollback()
    db.execute(sa.text('DELETE FROM "case" WHERE id = :id'), {"id": case_id})  # erasure reaches the trail
    db.commit()
    assert [a.action for a in accounts.list_actions(db)] == ["audit.run"]
