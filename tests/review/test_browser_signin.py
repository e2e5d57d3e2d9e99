"""Signing in with Debian's Chromium (Playwright, no browser download): a radiologist sees the worklist,
governance opens an audit, an admin the operations page, at 1280×800.

Screenshots go to ``$FAIRNODE_TEST_ARTIFACTS/review-signin`` (default ``build/test-artifacts/review-signin``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fairness_registry.accounts import Role
from review.app import build_context, serve
from tests.conftest import ARTIFACTS as TEST_ARTIFACTS
from tests.conftest import IN_CI
from tests.review.conftest import PASSWORDS, Registry, Retries, review_settings, status

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = TEST_ARTIFACTS / "review-signin"
REPORT = """<!doctype html><html><head><meta charset="utf-8"><title>Fairness audit 2026Q3</title></head>
<body><h1>Fairness audit: ct_abdomen_organs, 2026Q3</h1><p>Estimated mean Dice by sex: F 0.91, M 0.92.</p></body></html>
"""


@dataclass(frozen=True)
class Served:
    base: str
    registry: Registry


@pytest.fixture
def served(registry: Registry, tmp_path: Path) -> Iterator[Served]:
    audit = tmp_path / "audits" / "ct_abdomen_organs" / "2026Q3"
    audit.mkdir(parents=True)
    (audit / "report.html").write_text(REPORT, encoding="utf-8")
    (audit / "report.json").write_text('{"alerts": []}', encoding="utf-8")
    context = build_context(
        review_settings(), data_dir=tmp_path, status=status, registry_url=registry.url, retry_dead=Retries()
    )
    server = serve(context, "127.0.0.1", 0)
    try:
        yield Served(f"http://127.0.0.1:{server.port}", registry)
    finally:
        server.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail("Debian's chromium is not installed at /usr/bin/chromium")
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _sign_in(browser: Any, base: str, role: Role, start: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(base + start)
    assert "/login?next=" in page.url  # signed out: sent to the sign-in page
    page.fill("input[name=username]", role.value)
    page.fill("input[name=password]", PASSWORDS[role])
    page.click("button[type=submit]")
    return page


@pytest.mark.timeout(120)
def test_radiologist_signs_in_and_sees_the_worklist(served: Served, browser: Any) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(served.base + "/login")
    page.fill("input[name=username]", "radiologist")
    page.fill("input[name=password]", "wrong-password-0")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("Unknown user name or wrong password")
    page.screenshot(path=str(ARTIFACTS / "sign-in-refused.png"))
    page.close()

    page = _sign_in(browser, served.base, Role.RADIOLOGIST, "/worklist")
    expect(page.get_by_role("heading", name="Radiologist worklist")).to_be_visible()
    rows = page.locator("table.worklist tbody tr")
    expect(rows).to_have_count(2)
    first = rows.nth(0)
    assert first.get_attribute("id") == f"case-{served.registry.forwarded}"  # most doubtful first
    expect(first.get_by_role("link", name=f"Case {served.registry.forwarded}")).to_have_attribute(
        "href", f"/cases/{served.registry.forwarded}"
    )
    expect(page.locator("header nav")).to_contain_text("Worklist")
    expect(page.locator("header nav")).not_to_contain_text("Operations")
    page.screenshot(path=str(ARTIFACTS / "worklist.png"), full_page=True)

    page.select_option("select[name=reason]", "predicted Dice")
    page.click("form.filters button")
    expect(rows).to_have_count(1)
    assert rows.nth(0).get_attribute("id") == f"case-{served.registry.held}"
    page.screenshot(path=str(ARTIFACTS / "worklist-filtered.png"), full_page=True)

    page.click("header button:has-text('Sign out')")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.goto(served.base + "/worklist")
    assert "/login?next=" in page.url  # the session is over


@pytest.mark.timeout(120)
def test_governance_opens_an_audit_and_admin_the_operations(served: Served, browser: Any) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = _sign_in(browser, served.base, Role.GOVERNANCE, "/governance/audits")
    expect(page.get_by_role("heading", name="Fairness audits")).to_be_visible()
    row = page.locator("table.audits tbody tr").nth(0)
    expect(row).to_contain_text("2026Q3")
    expect(row).to_contain_text("ct_abdomen_organs")
    expect(row.get_by_role("link", name="JSON")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "audits.png"), full_page=True)
    row.get_by_role("link", name="view HTML").click()
    expect(page.get_by_role("heading", name="Fairness audit: ct_abdomen_organs, 2026Q3")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "audit-report.png"))
    response = page.goto(served.base + "/worklist")
    assert response is not None and response.status == 403  # no case lists for governance
    expect(page.locator("main")).to_contain_text("this needs radiologist")
    page.close()

    page = _sign_in(browser, served.base, Role.ADMIN, "/ops")
    expect(page.get_by_role("heading", name="Operations")).to_be_visible()
    expect(page.locator("main")).to_contain_text("CPUExecutionProvider")
    page.click("button:has-text('Retry every dead letter')")
    expect(page.get_by_role("status")).to_contain_text("1 dead deliveries queued again")
    page.screenshot(path=str(ARTIFACTS / "ops.png"), full_page=True)
