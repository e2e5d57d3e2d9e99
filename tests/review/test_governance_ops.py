"""Governance (audits listed, viewed, downloaded, run) and operations (readiness, metrics, dead letters)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from fairness_registry import accounts
from fairness_registry.accounts import Role
from fairness_registry.db import get_engine
from review.app import build_context, create_app
from review.audits import AuditRunner, audit_file, list_audits
from tests.review.conftest import Registry, Retries, review_settings, sign_in, status

Client = Callable[[Role | None], TestClient]

WRITE_REPORT = (
    "import pathlib, sys; d = pathlib.Path(sys.argv[1]) / 'ct_abdomen_organs' / sys.argv[2]; "
    "d.mkdir(parents=True, exist_ok=True); (d / 'report.json').write_text('{\"alerts\": []}'); "
    "(d / 'report.html').write_text('<h1>audit</h1>')"
)


def _audits(tmp_path: Path) -> Path:
    audits = tmp_path / "audits"
    for model, period, formats in (
        ("ct_abdomen_organs", "2026Q2", ("html", "pdf", "json")),
        ("xr_knee", "2026Q3", ("json",)),
    ):
        folder = audits / model / period
        folder.mkdir(parents=True)
        for fmt in formats:
            (folder / f"report.{fmt}").write_bytes(b"%PDF-1.7 fake" if fmt == "pdf" else b'{"alerts": []}')
    (audits / "not-an-audit.txt").write_text("ignored")
    (audits / "runs").mkdir()
    return audits


def test_audits_are_listed_and_files_resolved_inside_the_folder(tmp_path: Path) -> None:
    audits = _audits(tmp_path)
    listed = list_audits(audits)
    assert [(a.period, a.model, a.formats) for a in listed] == [
        ("2026Q3", "xr_knee", ["json"]),
        ("2026Q2", "ct_abdomen_organs", ["html", "pdf", "json"]),
    ]
    assert list_audits(tmp_path / "missing") == [] and list_audits(None) == []
    assert audit_file(audits, "ct_abdomen_organs", "2026Q2", "pdf") == audits / "ct_abdomen_organs/2026Q2/report.pdf"
    for model, period, fmt in (
        ("..", "2026Q2", "json"),
        ("ct_abdomen_organs", "..", "json"),
        ("xr_knee", "2026Q3", "exe"),
    ):
        assert audit_file(audits, model, period, fmt) is None
    assert audit_file(audits, "xr_knee", "2026Q3", "pdf") is None


def _governance(registry: Registry, tmp_path: Path, **extras: object) -> TestClient:
    context = build_context(
        review_settings(), data_dir=tmp_path, status=status, registry_url=registry.url, extras=dict(extras)
    )
    client = TestClient(create_app(context))
    sign_in(client, "governance", "governance-password-1")
    return client


def test_governance_pages_view_and_download(registry: Registry, tmp_path: Path) -> None:
    _audits(tmp_path)
    client = _governance(registry, tmp_path)
    page = client.get("/governance/audits")
    assert page.status_code == 200
    assert "/governance/audits/ct_abdomen_organs/2026Q2/report.pdf" in page.text
    assert "fairnode audit --period" in page.text  # no runner: the command line is shown
    assert "case-" not in page.text and "1.2.826" not in page.text  # aggregates only, no case list
    pdf = client.get("/governance/audits/ct_abdomen_organs/2026Q2/report.pdf")
    assert pdf.headers["content-type"] == "application/pdf"
    assert 'filename="audit-ct_abdomen_organs-2026Q2.pdf"' in pdf.headers["content-disposition"]
    html = client.get("/governance/audits/ct_abdomen_organs/2026Q2/report.html")
    assert html.headers["content-type"].startswith("text/html") and "content-disposition" not in html.headers
    assert client.get("/governance/audits/xr_knee/2026Q3/report.pdf").status_code == 404
    assert client.get("/governance/audits/xr_knee/..%2F..%2Fregistry.db/report.json").status_code == 404
    assert client.get("/api/audits/xr_knee/2026Q3").json() == {"alerts": []}
    assert [a["period"] for a in client.get("/api/audits").json()] == ["2026Q3", "2026Q2"]


@pytest.mark.timeout(60)
def test_running_an_audit_from_the_page_and_the_api(registry: Registry, tmp_path: Path) -> None:
    audits = tmp_path / "audits"
    runner = AuditRunner(
        lambda period, model: [sys.executable, "-c", WRITE_REPORT, str(audits), period], audits / "runs"
    )
    client = _governance(registry, tmp_path, run_audit=runner)
    page = client.get("/governance/audits")
    assert '<select name="model"><option>ct_abdomen_organs</option></select>' in page.text  # the registry's model
    response = client.post("/governance/audits/run", data={"period": "2026Q1", "model": "ct_abdomen_organs"})
    assert response.status_code == 200 and "Started: audit 2026Q1 of ct_abdomen_organs" in response.text
    refused = client.post("/governance/audits/run", data={"period": "last quarter"})
    assert refused.status_code == 400 and "not accepted" in refused.text
    api = client.post("/api/audits/run", json={"period": "2026-07"})
    assert api.status_code == 200 and api.json() == {"started": "audit 2026-07 of the only model"}
    for _run, process, _log in runner._runs:
        process.wait(timeout=30)
    assert [r.state for r in runner.runs()] == ["done", "done"]
    assert [a.period for a in list_audits(audits)] == ["2026Q1", "2026-07"]
    assert "2026Q1" in client.get("/governance/audits").text
    with Session(get_engine(registry.url)) as session:
        trail = accounts.list_actions(session, action="audit.run")
    assert [(a.username, a.after) for a in trail] == [
        ("governance", {"period": "2026-07", "model": None}),
        ("governance", {"period": "2026Q1", "model": "ct_abdomen_organs"}),
    ]


def test_a_failed_run_shows_its_last_line(registry: Registry, tmp_path: Path) -> None:
    audits = tmp_path / "audits"
    code = "import sys; print('error: no finished case of model m'); sys.exit(2)"
    runner = AuditRunner(lambda period, model: [sys.executable, "-c", code], audits / "runs")
    runner("2026Q1", None)
    runner._runs[0][1].wait(timeout=30)
    (run,) = runner.runs()
    assert (run.state, run.message) == ("failed", "error: no finished case of model m")
    client = _governance(registry, tmp_path, run_audit=runner)
    assert "error: no finished case of model m" in client.get("/governance/audits").text


def test_metrics_readiness_and_dead_letters(client_for: Client, retries: Retries, app: object) -> None:
    admin = client_for(Role.ADMIN)
    metrics = admin.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for line in (
        "fairnode_instances_received_total 42.0",
        'fairnode_studies{state="done"} 2.0',
        "fairnode_studies_processed_total 2.0",
        "fairnode_queue_depth 1.0",
        'fairnode_deliveries{state="dead"} 1.0',
        "fairnode_delivery_failures 1.0",
        "fairnode_dead_letters 1.0",
        'fairnode_stage_seconds_count{stage="inference"} 4.0',
        'fairnode_stage_seconds_sum{stage="inference"} 8.0',
        'fairnode_review_cases{state="held"} 1.0',
        "fairnode_review_rate 0.3333333333333333",
    ):
        assert line in text, line
    assert admin.get("/ready").json() == {"ready": True, "checks": {"node": "ok", "registry": "ok"}}
    assert admin.get("/api/ops/dead-letters").json()[0]["id"] == 7
    assert admin.get("/api/ops/models").json() == {"ct_abdomen_organs": {"providers": ["CPUExecutionProvider"]}}
    assert admin.post("/api/ops/dead-letters/retry").json() == {"requeued": 1}
    page = admin.post("/ops/dead-letters/retry", data={"csrf_token": admin.headers["X-CSRF-Token"]})
    assert page.status_code == 200 and "1 dead deliveries queued again" in page.text
    assert retries.calls == 2
    trail = admin.get("/api/actions").json()
    assert [(a["username"], a["action"], a["after"]) for a in trail] == [
        ("admin", "dead_letters.retry", {"requeued": 1})
    ] * 2


def test_readiness_fails_when_the_node_does_not_answer(registry: Registry, tmp_path: Path) -> None:
    def broken() -> dict[str, object]:
        raise ConnectionError("node stopped")

    context = build_context(review_settings(), data_dir=tmp_path, status=broken, registry_url=registry.url)
    response = TestClient(create_app(context)).get("/ready")
    assert response.status_code == 503
    assert response.json() == {"ready": False, "checks": {"node": "failed: ConnectionError", "registry": "ok"}}
