"""A radiologist's path through the case page in Debian's Chromium (Playwright, no browser download).

Sign in, open the most doubtful case from the worklist, toggle the segmentation and the heatmap, scroll by
keys, wheel, slider and a structure's name, accept, see the case leave the worklist; on another case
upload a corrected SEG and see its true Dice. Screenshots go to ``$FAIRNODE_TEST_ARTIFACTS/review-case``
(default ``build/test-artifacts/review-case``) at 1280×800.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlmodel import Session

from fairness_registry import accounts
from fairness_registry.accounts import Role
from fairness_registry.db import dispose_engines, get_engine, migrate, sqlite_url
from inference.metrics import dice
from review.app import build_context, serve
from review.security import hash_password
from tests.conftest import ARTIFACTS as TEST_ARTIFACTS
from tests.conftest import IN_CI
from tests.review.case_samples import SampleCase, ct_case, dx_case
from tests.review.conftest import PASSWORDS, review_settings, status

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = TEST_ARTIFACTS / "review-case"


@dataclass(frozen=True)
class Served:
    base: str
    doubtful: SampleCase  # CT, liver shrunk by one voxel, lowest predicted lower bound
    second: SampleCase  # CT, liver shrunk, less doubtful
    dx: SampleCase


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    url = sqlite_url(tmp_path / "registry.db")
    migrate(url)
    spool = tmp_path / "spool"
    with Session(get_engine(url)) as session:
        doubtful = ct_case(spool, session, tmp_path / "c1", index=0, perturb=1, doubt=0.45)
        second = ct_case(spool, session, tmp_path / "c2", index=1, perturb=1, doubt=0.65)
        dx = dx_case(spool, session, tmp_path / "c3", doubt=0.7)
        for role, password in PASSWORDS.items():
            accounts.create_user(session, username=role.value, role=role, password_hash=hash_password(password))
    context = build_context(
        review_settings(), data_dir=tmp_path, status=status, registry_url=url, extras={"spool_dir": spool}
    )
    server = serve(context, "127.0.0.1", 0)
    try:
        yield Served(f"http://127.0.0.1:{server.port}", doubtful, second, dx)
    finally:
        server.stop()
        dispose_engines()


def _browser():  # type: ignore[no-untyped-def]
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail("Debian's chromium is not installed at /usr/bin/chromium")
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    return sync_playwright()


@pytest.mark.timeout(300)
def test_radiologist_reviews_the_most_doubtful_case(served: Served) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with _browser() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        page.goto(f"{served.base}/login")
        page.fill("input[name=username]", "radiologist")
        page.fill("input[name=password]", PASSWORDS[Role.RADIOLOGIST])
        page.click("button[type=submit]")
        page.goto(f"{served.base}/worklist")
        first = page.locator("table.worklist tr[id^=case-]").first
        expect(first).to_have_id(f"case-{served.doubtful.case_id}")
        page.screenshot(path=str(ARTIFACTS / "1-worklist.png"))
        first.locator("a", has_text="Case").first.click()
        page.wait_for_url(f"**/cases/{served.doubtful.case_id}")

        viewer, image = page.locator("#viewer"), page.locator("#slice")

        def src(k: int | str, overlay: bool, heatmap: bool, preset: str) -> str:
            flags = f"overlay={str(overlay).lower()}&heatmap={str(heatmap).lower()}&preset={preset}"
            return f"/cases/{served.doubtful.case_id}/slices/{k}.png?{flags}"

        n = served.doubtful.labels.shape[0]
        liver_slice = int((served.doubtful.labels == 1).sum(axis=(1, 2)).argmax())
        expect(viewer).to_have_attribute("data-current", str(liver_slice))

        def loaded() -> None:
            page.wait_for_function(
                "() => { const i = document.getElementById('slice'); return i.complete && i.naturalWidth; }"
            )

        loaded()
        assert image.bounding_box() is not None and image.bounding_box()["height"] <= 800  # type: ignore[index]
        page.screenshot(path=str(ARTIFACTS / "2-case-overlay.png"))

        page.uncheck("#overlay")
        expect(image).to_have_attribute("src", src(liver_slice, False, False, "abdomen"))
        loaded()
        page.screenshot(path=str(ARTIFACTS / "3-case-plain.png"))
        page.check("#overlay")
        page.check("#heatmap")
        expect(image).to_have_attribute("src", src(liver_slice, True, True, "abdomen"))
        loaded()
        page.screenshot(path=str(ARTIFACTS / "4-case-heatmap.png"))

        # scrolling: keys, wheel, PageDown/PageUp, slider, Home; a structure's name jumps to its largest slice
        viewer.focus()
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        expect(viewer).to_have_attribute("data-current", str(liver_slice + 2))
        page.keyboard.press("ArrowUp")
        expect(viewer).to_have_attribute("data-current", str(liver_slice + 1))
        viewer.hover()
        page.mouse.wheel(0, 120)
        expect(viewer).to_have_attribute("data-current", str(liver_slice + 2))
        page.keyboard.press("PageUp")
        expect(viewer).to_have_attribute("data-current", str(max(0, liver_slice + 2 - 10)))
        page.keyboard.press("End")
        expect(viewer).to_have_attribute("data-current", str(n - 1))
        page.locator("#slider").fill("3")
        expect(viewer).to_have_attribute("data-current", "3")
        expect(page.locator("#slice-no")).to_have_text(f"slice 4 / {n}")
        aorta = page.locator("button.structure", has_text="aorta")
        aorta.click()
        expect(viewer).to_have_attribute("data-current", aorta.get_attribute("data-slice") or "")
        page.select_option("#preset", "bone")
        expect(image).to_have_attribute("src", src(aorta.get_attribute("data-slice") or "", True, True, "bone"))
        loaded()
        page.screenshot(path=str(ARTIFACTS / "5-case-bone-aorta.png"))

        # accept: the case is closed, the trail says so, the worklist no longer has it
        page.click("#accept")
        expect(page.locator("#done")).to_contain_text("Case accepted")
        expect(page.locator("#review-state")).to_have_text("reviewed")
        expect(page.locator("#trail li").first).to_contain_text("accept by radiologist")
        page.screenshot(path=str(ARTIFACTS / "6-case-accepted.png"), full_page=True)
        page.goto(f"{served.base}/worklist")
        expect(page.locator(f"#case-{served.doubtful.case_id}")).to_have_count(0)
        expect(page.locator(f"#case-{served.second.case_id}")).to_have_count(1)

        # a corrected SEG uploaded on the page: the true Dice appears beside the estimate
        page.goto(f"{served.base}/cases/{served.second.case_id}")
        expect(page.locator("#structure-liver .true")).to_contain_text("none yet")
        page.set_input_files("#correction-file", str(served.second.truth_seg))
        page.click("#upload")
        labels, truth = served.second.labels == 1, served.second.truth == 1
        expected = dice(labels, truth)
        expect(page.locator("#structure-liver .true-dice")).to_have_text(f"{expected:.2f}")
        expect(page.locator("#structure-spleen .true-dice")).to_have_text("1.00")
        expect(page.locator("#trail li").first).to_contain_text("correct by radiologist")
        page.screenshot(path=str(ARTIFACTS / "7-case-corrected.png"), full_page=True)

        # the radiograph: one frame, full-range window only
        page.goto(f"{served.base}/cases/{served.dx.case_id}")
        expect(page.locator("#slider")).to_be_disabled()
        expect(page.locator("#preset option")).to_have_count(1)
        loaded()
        page.screenshot(path=str(ARTIFACTS / "8-radiograph.png"))
        browser.close()
    assert errors == [], errors
