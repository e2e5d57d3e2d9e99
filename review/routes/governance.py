"""Governance: the audits (aggregates only, never case lists), each viewed as HTML or downloaded as PDF/JSON,
and a form to run one for a period (with the injected audit runner; without one the page lists what exists).
"""

from __future__ import annotations

import logging
import re
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlmodel import select

from dicom_node import audit_messages as am
from dicom_node import audit_trail
from fairness_registry import accounts
from fairness_registry.accounts import Role
from fairness_registry.models import Case
from review.audits import FORMATS, AuditRunner, audit_file, list_audits
from review.deps import ContextDep, CurrentUser, ReviewContext, client_address, require_role, templates

logger = logging.getLogger(__name__)

router = APIRouter(tags=["governance"])
GOVERNANCE = require_role(Role.GOVERNANCE, Role.ADMIN)
#: Periods the run form accepts: a quarter (2026Q3), a month (2026-07) or a year (2026).
PERIOD_RE = re.compile(r"^\d{4}(Q[1-4]|-(0[1-9]|1[0-2]))?$")


def run_audit(context: ReviewContext, *, period: str, model: str | None, user_id: int | None) -> str:
    """Start an audit for a period (400 for a period not accepted, 503 without a runner); what was started."""
    if not PERIOD_RE.fullmatch(period):
        raise HTTPException(
            400, f"period {period!r} is not accepted; use a quarter (2026Q3), a month (2026-07) or a year"
        )
    if model is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", model):
        raise HTTPException(400, f"model {model!r} is not accepted; use a model name as `fairnode model list` shows it")
    runner = context.extras.get("run_audit")
    if runner is None:
        raise HTTPException(503, "this node cannot run audits from the web app; run `fairnode audit --period ...`")
    started = str(runner(period, model))
    if context.registry is not None and user_id is not None:
        with context.registry() as db:
            accounts.append_action(db, user_id=user_id, action="audit.run", after={"period": period, "model": model})
    logger.info("audit for %s (%s) started from the web app", period, model or "all models")
    return started


@router.get("/governance/audits", dependencies=[GOVERNANCE], include_in_schema=False)
def audits_page(request: Request, context: ContextDep, started: str | None = None) -> Response:
    """The audits found, and the run form."""
    runner = context.extras.get("run_audit")
    runs = runner.runs() if isinstance(runner, AuditRunner) else []
    models: list[str] = []
    if context.registry is not None:
        with context.registry() as db:
            models = sorted(str(m) for m in db.exec(select(Case.model).distinct()))
    return templates.TemplateResponse(
        request,
        "audits.html",
        {
            "audits": list_audits(context.audits_dir),
            "audits_dir": context.audits_dir,
            "can_run": runner is not None,
            "started": started,
            "runs": runs,
            "models": models,
        },
    )


@router.get("/governance/audits/{model}/{period}/report.{fmt}", dependencies=[GOVERNANCE], include_in_schema=False)
def audit_report(
    request: Request, context: ContextDep, user: CurrentUser, model: str, period: str, fmt: str
) -> Response:
    """One report file: HTML shown, PDF and JSON downloaded (an Export on the audit trail)."""
    path = audit_file(context.audits_dir, model, period, fmt)
    if path is None:
        raise HTTPException(404, f"no {fmt} report for {model} {period}; formats: {', '.join(FORMATS)}")
    address = client_address(request)
    audit_trail.record(
        am.audit_export(
            user=user.username,
            report=f"fairness audit {model} {period} ({fmt})",
            destination=f"browser at {address}",
            address=address,
        )
    )
    if fmt == "html":
        return FileResponse(path, media_type=FORMATS[fmt])
    return FileResponse(path, media_type=FORMATS[fmt], filename=f"audit-{model}-{period}.{fmt}")


@router.post("/governance/audits/run", dependencies=[GOVERNANCE], include_in_schema=False)
def run_audit_form(
    context: ContextDep,
    user: CurrentUser,
    period: Annotated[str, Form(max_length=16)],
    model: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """The run form."""
    started = run_audit(context, period=period.strip(), model=model.strip() or None, user_id=user.id)
    return RedirectResponse(f"/governance/audits?started={quote(started)}", status_code=303)
