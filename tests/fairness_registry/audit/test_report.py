"""``fairnode audit`` end to end on a real registry: the three reports, the trend from the kept copies, the
HTML in Chromium, the PDF as PNG pages, and no identifier or small group in any file."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from fairness_registry.audit.synthetic import synthetic_frame
from fairness_registry.db import get_engine, migrate
from fairnode.cli import app
from tests.conftest import ARTIFACTS, IN_CI, require_tool
from tests.fairness_registry.audit.registry_cases import Recorded, record_frame, shifted
from tests.fairness_registry.conftest import TEST_SECRET

#: Screenshots and PDF pages of the last run, for a person to look at.
ARTEFACTS = ARTIFACTS / "audit"
TINY_SITE = "Smallbrook"


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Recorded, list[str]]:
    """A SQLite registry with two quarters of cases (Black patients worse in Q3, a site of 4 patients), audited
    for 2026Q2 and then 2026Q3 with the CLI. Returns (data dir, Q3 report folder, what went in, pseudonyms)."""
    data_dir = tmp_path_factory.mktemp("audit-cli")
    url = f"sqlite:///{data_dir / 'registry.db'}"
    migrate(url)
    q3 = synthetic_frame(70, seed=31, effects={("ethnic_group", "Black"): -0.09}, sites=("North", "South"))
    patients = sorted(q3["pseudonym"].unique())
    q3.loc[q3["pseudonym"].isin(patients[:4]), "site"] = TINY_SITE
    q2 = synthetic_frame(70, seed=32, sites=("North", "South"))
    q2["pseudonym"] = "q2-" + q2["pseudonym"]
    with Session(get_engine(url)) as session:
        recorded = record_frame(session, q3)
        earlier = record_frame(session, shifted(q2, -91))
        recorded.identifiers += earlier.identifiers
        from fairness_registry.audit.data import load_frame, parse_period

        pseudonyms = sorted(
            set(load_frame(session, start=parse_period("2026")[0], end=parse_period("2026")[1])["pseudonym"])
        )
    env = {"FAIRNODE_DATA_DIR": str(data_dir), "FAIRNODE_REGISTRY_URL": url, "FAIRNODE_PSEUDONYM_SECRET": TEST_SECRET}
    runner = CliRunner()
    first = runner.invoke(app, ["audit", "--period", "2026Q2", "--no-pdf"], env=env)
    assert first.exit_code == 0, first.output
    out = data_dir / "out"
    second = runner.invoke(app, ["audit", "--period", "2026Q3", "--out", str(out)], env=env)
    assert second.exit_code == 0, second.output
    return data_dir, out, recorded, pseudonyms


def test_cli_writes_the_three_reports_and_keeps_a_copy(audited: tuple[Path, Path, Recorded, list[str]]) -> None:
    data_dir, out, _, _ = audited
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["meta"]["period"] == "2026Q3" and report["meta"]["model"] == "ct-abdomen"
    assert report["meta"]["start"] == "2026-07-01" and report["meta"]["end"] == "2026-09-30"
    assert report["summary"]["patients"] == 70
    assert (out / "report.html").stat().st_size > 50_000
    assert (out / "report.pdf").read_bytes().startswith(b"%PDF")
    kept = data_dir / "audits" / "ct-abdomen" / "2026Q3"
    assert json.loads((kept / "report.json").read_text(encoding="utf-8")) == report
    assert (kept / "report.pdf").is_file()
    # the trend read the Q2 report kept by the first run
    assert report["trend"]["periods"] == ["2026Q2", "2026Q3"]
    assert any(a["kind"] == "disparity" and a["group"] == "Black" for a in report["alerts"])
    html = (out / "report.html").read_text(encoding="utf-8")
    for finding in report["findings"]:
        assert finding["title"] in html  # same findings in both
    black = next(
        r
        for r in report["metrics"]
        if (r["attribute"], r["group"], r["structure"]) == ("ethnic_group", "Black", "liver")
    )
    assert (
        f"{black['predictor']['mean']:.3f} ({black['predictor']['low']:.3f}–{black['predictor']['high']:.3f})" in html
    )


def test_cli_puts_each_export_on_the_security_audit_trail(audited: tuple[Path, Path, Recorded, list[str]]) -> None:
    from dicom_node.audit_trail import read_log

    data_dir, out, _, _ = audited
    exports = []
    for message in read_log(data_dir / "audit" / "audit.log"):
        event = message.find("EventIdentification")
        code = event.find("EventID") if event is not None else None
        if code is not None and code.get("csd-code") == "110106":  # Export
            objects = [o.get("ParticipantObjectID") for o in message.iter("ParticipantObjectIdentification")]
            folders = [p.get("UserID") for p in message.iter("ActiveParticipant")]
            exports.append((objects, folders))
    assert len(exports) == 2  # the Q2 and the Q3 audit
    objects, folders = exports[1]
    assert objects == ["fairness audit ct-abdomen 2026Q3"]
    assert str(out.resolve()) in folders


def test_cli_errors_are_one_line(audited: tuple[Path, Path, Recorded, list[str]]) -> None:
    data_dir, _, _, _ = audited
    env = {"FAIRNODE_DATA_DIR": str(data_dir), "FAIRNODE_REGISTRY_URL": f"sqlite:///{data_dir / 'registry.db'}"}
    runner = CliRunner()
    for args, message in (
        (["--period", "2025Q1"], "no finished case of model ct-abdomen was received from 2025-01-01 to 2025-03-31"),
        (["--period", "2026Q3", "--model", "xr-knee"], "unknown model 'xr-knee'"),
        (["--period", "2026Q3", "--site", TINY_SITE], "only 4 patients in the period"),
        (["--period", "2026Q7"], "period '2026Q7' is not understood"),
        (["--from", "2026-07-01"], "say which period to audit"),
    ):
        result = runner.invoke(app, ["audit", *args], env=env)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output


def _pdf_text(path: Path) -> str:
    tool = require_tool("pdftotext")
    return subprocess.run([tool, "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout


def test_no_identifier_and_no_small_group_in_any_report_file(audited: tuple[Path, Path, Recorded, list[str]]) -> None:
    data_dir, out, recorded, pseudonyms = audited
    assert len(recorded.identifiers) >= 5 * 140 and len(pseudonyms) == 70  # the same patients came back in Q3
    files = sorted(out.glob("report.*")) + sorted((data_dir / "audits").rglob("report.*"))
    assert len(files) == 3 + 3 + 2
    texts = {f: (_pdf_text(f) if f.suffix == ".pdf" else f.read_text(encoding="utf-8")) for f in files}
    assert all("Fairness audit" in t or '"meta"' in t for t in texts.values())  # the scan reads real text
    needles = [*recorded.identifiers, *pseudonyms]
    found = [(f.name, n) for f, t in texts.items() for n in needles if n in t]
    assert found == []
    raw = [(f.name, n) for f in files for n in needles if n.encode() in f.read_bytes()]
    assert raw == []
    assert [f.name for f, t in texts.items() if re.search(rf"\b{TINY_SITE}\b", t)] == []


def test_html_in_chromium(audited: tuple[Path, Path, Recorded, list[str]]) -> None:
    chromium = Path("/usr/bin/chromium")
    if not chromium.is_file():
        if IN_CI:
            pytest.fail("/usr/bin/chromium is not installed")
        pytest.skip("/usr/bin/chromium is not installed")
    from playwright.sync_api import sync_playwright

    _, out, _, _ = audited
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1400})
            page.on("request", lambda request: requests.append(request.url))
            page.goto((out / "report.html").as_uri())
            assert page.title() == "Fairness audit – ct-abdomen – 2026Q3"
            assert page.locator("h1").inner_text() == "Fairness audit of ct-abdomen"
            assert page.locator(".finding.risk").count() >= 1
            assert page.locator(".finding .title").first.inner_text().startswith("Ethnic group Black at risk")
            images = page.locator("figure img")
            assert images.count() >= 15
            widths = page.eval_on_selector_all("figure img", "els => els.map(e => e.naturalWidth)")
            assert min(widths) > 100  # every figure decoded
            assert page.get_by_text("Approval").count() >= 1
            page.screenshot(path=str(ARTEFACTS / "report-first-page.png"))
            page.screenshot(path=str(ARTEFACTS / "report-full.png"), full_page=True)
        finally:
            browser.close()
    external = [u for u in requests if not (u.startswith("file:") or u.startswith("data:"))]
    assert external == []  # self-contained
    assert (ARTEFACTS / "report-first-page.png").stat().st_size > 10_000


def test_pdf_pages_as_png(audited: tuple[Path, Path, Recorded, list[str]]) -> None:
    _, out, _, _ = audited
    pdftoppm = require_tool("pdftoppm")
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTEFACTS.glob("pdf-page-*.png"):
        old.unlink()
    subprocess.run([pdftoppm, "-r", "70", "-png", str(out / "report.pdf"), str(ARTEFACTS / "pdf-page")], check=True)
    pages = sorted(ARTEFACTS.glob("pdf-page-*.png"))
    assert len(pages) >= 8
    first = _pdf_text(out / "report.pdf").split("\f")
    assert "Fairness audit of ct-abdomen" in first[0] and "Findings" in first[0]
    assert "Page 1 of" in first[0]
    assert any("Approval" in page and "Signature" in page for page in first)
    shutil.copyfile(out / "report.pdf", ARTEFACTS / "report.pdf")
