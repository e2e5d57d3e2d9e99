"""schemathesis against the app's OpenAPI schema: no generated request gets a 500, for any role's token."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from sqlmodel import Session

from fairness_registry import accounts
from fairness_registry.accounts import Role
from fairness_registry.db import get_engine
from review.app import build_context, create_app
from review.security import hash_token, new_token
from tests.review.conftest import Registry, Retries, review_settings, status


@pytest.fixture
def api_app(registry: Registry, tmp_path: Path) -> FastAPI:
    audit = tmp_path / "audits" / "ct_abdomen_organs" / "2026Q3"
    audit.mkdir(parents=True)
    (audit / "report.json").write_text('{"alerts": []}')
    context = build_context(
        review_settings(),
        data_dir=tmp_path,
        status=status,
        registry_url=registry.url,
        retry_dead=Retries(),
        extras={"run_audit": lambda period, model: f"audit {period}"},
    )
    app = create_app(context)
    tokens: dict[Role, str] = {}
    with Session(get_engine(registry.url)) as session:
        for role in Role:
            user = accounts.get_user(session, username=role.value)
            assert user is not None and user.id is not None
            tokens[role] = new_token()
            accounts.add_token(session, user_id=user.id, token_hash=hash_token(tokens[role]))
    app.state.test_tokens = tokens
    return app


def test_no_generated_request_gets_a_500(api_app: FastAPI) -> None:
    api_schema = schemathesis.openapi.from_asgi("/openapi.json", api_app)
    tokens: dict[Role, str] = api_app.state.test_tokens
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12
    failures: list[str] = []

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=10, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            for role, token in tokens.items():
                response = case.call(headers={"Authorization": f"Bearer {token}"})
                if response.status_code >= 500 and response.status_code != 503:
                    failures.append(
                        f"{case.method} {case.formatted_path} as {role.value}: {response.status_code} "
                        f"{response.text[:300]}"
                    )
            signed_out = case.call()
            if signed_out.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} signed out: {signed_out.status_code}")

        run()
    assert failures == []
