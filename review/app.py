"""The node's web app: the status page (health, studies, deliveries, dead letters, models) and the radiologists'
worklist (REVIEW cases, newest first, each closed by marking it reviewed).

The app gets what it shows through injected objects, so it imports nothing of the node: a ``status`` callable,
and a :class:`Worklist` (:class:`RegistryWorklist` serves one from the registry). Without a worklist the
worklist routes answer 503.

Routes
------
``GET /`` status page (links to the worklist) · ``GET /health`` · ``GET /api/status`` ·
``GET /worklist`` (HTML; ``?include_reviewed=true`` shows closed cases too) · ``POST /worklist/{case_id}/reviewed``
(the page's button; redirects back) · ``GET /api/worklist`` (JSON list of
:class:`~fairness_registry.models.WorklistItem`) · ``GET /api/worklist/counts`` · ``POST /api/worklist/{case_id}/state``
with ``{"state": "reviewed"}``: 200 with the item, 404 unknown case, 409 transition not allowed (the body lists
the allowed ones), 422 unknown state (the body lists the accepted ones).

Nothing shown identifies a patient: worklist items name studies and series by UID only.
"""

from __future__ import annotations

import html
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Annotated, Any, Protocol

import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel
from sqlmodel import Session

from fairness_registry import crud
from fairness_registry.db import get_engine
from fairness_registry.models import ReviewState, WorklistItem, WorklistStructure

__all__ = [
    "RegistryWorklist",
    "StatusServer",
    "Worklist",
    "create_app",
    "render_status",
    "render_worklist",
    "serve_status_page",
]

logger = logging.getLogger(__name__)

StatusProvider = Callable[[], dict[str, Any]]

#: Most worklist items one page or API call shows.
MAX_ITEMS = crud.MAX_PAGE
#: Review states still waiting for a radiologist.
OPEN_STATES = (ReviewState.HELD, ReviewState.FORWARDED, ReviewState.SENT_FOR_REVIEW)


class Worklist(Protocol):
    """What the worklist routes need.

    ``set_state`` raises :class:`fairness_registry.crud.NotFoundError` for an unknown case,
    :class:`fairness_registry.crud.ReviewTransitionError` for a change the case's state does not allow, and
    ``ValueError`` for an unknown state.
    """

    def items(self, *, include_reviewed: bool = False, limit: int = 100) -> list[WorklistItem]:
        """REVIEW cases, newest first (closed ones only with ``include_reviewed``)."""
        ...

    def counts(self) -> Mapping[ReviewState, int]:
        """Cases per review state."""
        ...

    def set_state(self, case_id: int, state: str) -> WorklistItem:
        """Change a case's review state; the item as it is afterwards."""
        ...


class RegistryWorklist:
    """A :class:`Worklist` read from and written to the registry, one short session per call.

    Parameters
    ----------
    session_factory : callable returning sqlmodel.Session
        Opens a session on the registry, e.g. ``lambda: Session(get_engine(url))`` (:meth:`from_url`).
    """

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self._session = session_factory

    @classmethod
    def from_url(cls, url: str) -> RegistryWorklist:
        """The worklist of the registry at ``url`` (on the process-wide engine of that URL)."""
        engine = get_engine(url)
        return cls(lambda: Session(engine))

    def items(self, *, include_reviewed: bool = False, limit: int = 100) -> list[WorklistItem]:
        """See :func:`fairness_registry.crud.list_worklist`."""
        with self._session() as session:
            return crud.list_worklist(session, include_reviewed=include_reviewed, limit=limit)

    def counts(self) -> dict[ReviewState, int]:
        """See :func:`fairness_registry.crud.worklist_counts`."""
        with self._session() as session:
            return crud.worklist_counts(session)

    def set_state(self, case_id: int, state: str) -> WorklistItem:
        """See :func:`fairness_registry.crud.set_review_state`."""
        with self._session() as session:
            crud.set_review_state(session, case_id=case_id, state=state)
            return crud.worklist_item(session, case_id=case_id)


class StateChange(BaseModel):
    """Body of ``POST /api/worklist/{case_id}/state``."""

    state: str


def _no_worklist() -> JSONResponse:
    return JSONResponse(
        status_code=503,
        content={"detail": "this node runs without a registry, so it has no worklist; configure a registry"},
    )


def _state_error(exc: Exception) -> tuple[int, dict[str, Any]]:
    """HTTP status and JSON body for an error of :meth:`Worklist.set_state` (re-raises anything else)."""
    if isinstance(exc, crud.NotFoundError):
        return 404, {"detail": str(exc)}
    if isinstance(exc, crud.ReviewTransitionError):
        return 409, {
            "detail": str(exc),
            "current": None if exc.current is None else exc.current.value,
            "allowed": [s.value for s in ReviewState if s in exc.allowed],
        }
    if isinstance(exc, ValueError):
        return 422, {"detail": str(exc), "accepted": [s.value for s in ReviewState]}
    raise exc


def create_app(status: StatusProvider, worklist: Worklist | None = None) -> FastAPI:
    """The web app.

    Parameters
    ----------
    status : callable returning dict
        What the status page shows (see :func:`render_status`).
    worklist : Worklist, optional
        The radiologists' worklist (e.g. :class:`RegistryWorklist`); without one the worklist routes answer 503.

    Returns
    -------
    fastapi.FastAPI
    """
    app = FastAPI(title="fairnode", description="fairnode status and review", version="0.1.0")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/status")
    def api_status() -> dict[str, Any]:
        return status()

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        counts: Mapping[ReviewState, int] | None = None
        if worklist is not None:
            try:
                counts = worklist.counts()
            except Exception:  # the status page must still show when the registry is down; logged, shown
                logger.exception("worklist counts unavailable for the status page")
                counts = {}
        return render_status(status(), counts)

    @app.get("/worklist", response_class=HTMLResponse, name="worklist_page", response_model=None)
    def worklist_page(include_reviewed: bool = False) -> HTMLResponse:
        if worklist is None:
            return HTMLResponse(_page("fairnode worklist", "<p>This node runs without a registry.</p>"), 503)
        items = worklist.items(include_reviewed=include_reviewed, limit=MAX_ITEMS)
        return HTMLResponse(render_worklist(items, worklist.counts(), include_reviewed=include_reviewed))

    @app.post("/worklist/{case_id}/reviewed", response_class=HTMLResponse, response_model=None)
    def mark_reviewed(case_id: int, request: Request) -> HTMLResponse | RedirectResponse:
        if worklist is None:
            return HTMLResponse(_page("fairnode worklist", "<p>This node runs without a registry.</p>"), 503)
        try:
            worklist.set_state(case_id, ReviewState.REVIEWED.value)
        except (crud.NotFoundError, ValueError) as exc:
            code, body = _state_error(exc)
            back = '<p><a href="../../worklist">Back to the worklist</a></p>'
            return HTMLResponse(_page("fairnode worklist", f"<p>{html.escape(body['detail'])}</p>{back}"), code)
        return RedirectResponse(str(request.url_for("worklist_page")), status_code=303)

    @app.get("/api/worklist", response_model=list[WorklistItem])
    def api_worklist(
        include_reviewed: bool = False, limit: Annotated[int, Query(ge=1, le=MAX_ITEMS)] = 100
    ) -> list[WorklistItem] | JSONResponse:
        if worklist is None:
            return _no_worklist()
        return worklist.items(include_reviewed=include_reviewed, limit=limit)

    @app.get("/api/worklist/counts", response_model=dict[str, int])
    def api_worklist_counts() -> dict[str, int] | JSONResponse:
        if worklist is None:
            return _no_worklist()
        return {state.value: count for state, count in worklist.counts().items()}

    @app.post("/api/worklist/{case_id}/state", response_model=WorklistItem)
    def api_set_state(case_id: int, change: StateChange) -> WorklistItem | JSONResponse:
        if worklist is None:
            return _no_worklist()
        try:
            return worklist.set_state(case_id, change.state)
        except (crud.NotFoundError, ValueError) as exc:
            code, body = _state_error(exc)
            return JSONResponse(status_code=code, content=body)

    return app


def _table(headers: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body or '<tr><td>none</td></tr>'}</tbody></table>"


_CSS = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}th{background:#eee}"
    ".flag{color:#a00;font-weight:bold}form{margin:0}"
)


def _page(title: str, body: str, *, refresh_s: int | None = None) -> str:
    """A whole HTML page around ``body`` (already escaped)."""
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return (
        f'<!doctype html><html><head><meta charset="utf-8">{refresh}<title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>{body}</body></html>"
    )


def _worklist_summary(counts: Mapping[ReviewState, int] | None) -> str:
    """The status page's worklist paragraph: a link and the open cases per state."""
    if counts is None:
        return "<p>No worklist: this node runs without a registry.</p>"
    if not counts:
        return '<p><a href="worklist">Radiologist worklist</a> (counts unavailable; see the log)</p>'
    waiting = sum(counts.get(s, 0) for s in OPEN_STATES)
    parts = ", ".join(f"{html.escape(_state_label(s))} {counts.get(s, 0)}" for s in OPEN_STATES)
    return f'<p><a href="worklist">Radiologist worklist</a>: {waiting} to review ({parts})</p>'


def render_status(s: dict[str, Any], worklist_counts: Mapping[ReviewState, int] | None = None) -> str:
    """The status page as HTML (refreshes every 5 s).

    Parameters
    ----------
    s : dict
        What the node reports: ae_title, dicom_port, free_disk_mb, studies, deliveries, dead_letters,
        recent_studies, models.
    worklist_counts : mapping of ReviewState to int, optional
        Cases per review state, for the worklist link; ``None`` when the node has no worklist, empty when the
        counts could not be read.
    """
    studies = _table(["state", "count"], [[k, v] for k, v in s.get("studies", {}).items()])
    deliveries = _table(["state", "count"], [[k, v] for k, v in s.get("deliveries", {}).items()])
    dead = _table(
        ["id", "study", "destination", "attempts", "last error"],
        [
            [d["id"], d["study_uid"], d["destination"], d["attempts"], d["last_error"]]
            for d in s.get("dead_letters", [])
        ],
    )
    recent = _table(
        ["study", "state", "run", "reason"],
        [[r["study_uid"], r["state"], r["run"], r["reason"]] for r in reversed(s.get("recent_studies", []))],
    )
    models = _table(["model", "providers"], [[k, ", ".join(v["providers"])] for k, v in s.get("models", {}).items()])
    ae = html.escape(str(s.get("ae_title", "")))
    port = html.escape(str(s.get("dicom_port", "")))
    free = html.escape(str(s.get("free_disk_mb", "")))
    body = f"""<h1>fairnode {ae}</h1>
<p>DICOM port {port} &middot; free disk {free} MB</p>
<h2>Worklist</h2>{_worklist_summary(worklist_counts)}
<h2>Studies</h2>{studies}<h2>Recent studies</h2>{recent}<h2>Deliveries</h2>{deliveries}
<h2>Dead letters</h2><p>Re-send with <code>fairnode deliveries retry</code>.</p>{dead}<h2>Models in use</h2>{models}"""
    return _page("fairnode status", body, refresh_s=5)


def _state_label(state: ReviewState) -> str:
    return state.value.replace("_", " ")


def _number(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _structure_line(structure: WorklistStructure) -> str:
    """``liver: Dice 0.62 [0.51–0.73] · RCA 0.66 (mean 0.58), HD95 4.0 mm``, escaped; flagged when REVIEW."""
    if structure.predicted_dice is None:
        predicted = "Dice –"
    else:
        predicted = f"Dice {_number(structure.predicted_dice)}"
        if structure.predicted_low is not None and structure.predicted_high is not None:
            predicted += f" [{_number(structure.predicted_low)}–{_number(structure.predicted_high)}]"
    if structure.rca_max_dice is None:
        rca = "RCA –"
    else:
        rca = f"RCA {_number(structure.rca_max_dice)} (mean {_number(structure.rca_mean_dice)})"
        rca += ", HD95 –" if structure.rca_hd95_mm is None else f", HD95 {structure.rca_hd95_mm:.1f} mm"
    text = html.escape(f"{structure.name}: {predicted} · {rca}")
    return f'<span class="flag">{text}</span>' if structure.route == "REVIEW" else text


def _time(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def _worklist_row(item: WorklistItem) -> str:
    """One ``<tr>`` of the worklist table."""
    if item.review_state is ReviewState.REVIEWED:
        action = html.escape(f"reviewed {_time(item.reviewed_at)}")
    else:
        action = (
            f'<form method="post" action="worklist/{item.case_id}/reviewed">'
            '<button type="submit">Mark reviewed</button></form>'
        )
    cells = [
        html.escape(_time(item.created_at)),
        f"<code>{html.escape(item.study_uid)}</code>",
        f"<code>{html.escape(item.series_uid)}</code> ({html.escape(item.modality)})",
        html.escape(f"{item.model} {item.model_version} (run {item.run})"),
        "<br>".join(html.escape(r) for r in item.reasons) or "–",
        "<br>".join(_structure_line(s) for s in item.structures) or "–",
        html.escape(_state_label(item.review_state)),
        action,
    ]
    return f'<tr id="case-{item.case_id}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def render_worklist(
    items: list[WorklistItem], counts: Mapping[ReviewState, int], *, include_reviewed: bool = False
) -> str:
    """The worklist page as HTML: one row per case, newest first, each with a button to mark it reviewed.

    Parameters
    ----------
    items : list of WorklistItem
        In the order to show (newest first).
    counts : mapping of ReviewState to int
        Cases per review state, for the summary line.
    include_reviewed : bool
        Whether ``items`` include reviewed cases (switches the link to the other view).
    """
    headers = [
        "created",
        "study UID",
        "series UID",
        "model",
        "reasons",
        "structures: predicted Dice [interval] · RCA",
        "state",
        "",
    ]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    rows = "".join(_worklist_row(item) for item in items)
    if not rows:
        rows = f'<tr><td colspan="{len(headers)}">no cases to review</td></tr>'
    summary = ", ".join(
        f"{html.escape(_state_label(s))} {counts.get(s, 0)}" for s in (*OPEN_STATES, ReviewState.REVIEWED)
    )
    toggle = (
        '<a href="worklist">open cases only</a>'
        if include_reviewed
        else '<a href="worklist?include_reviewed=true">include reviewed cases</a>'
    )
    body = f"""<h1>Radiologist worklist</h1>
<p><a href="./">Status</a> &middot; {summary} &middot; {toggle}</p>
<p>Predicted Dice with its conformal interval, and reverse classification accuracy (RCA: best and mean Dice against
reference cases, HD95 of the best); structures the gate flagged are in red.</p>
<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"""
    return _page("fairnode worklist", body)


class StatusServer:
    """uvicorn serving the app in a background thread."""

    def __init__(self, app: FastAPI, host: str, port: int):
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="status-page", daemon=True)

    def start(self) -> None:
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            threading.Event().wait(0.05)
        if not self._server.started:
            raise OSError("the status page could not start (is the port in use?)")

    @property
    def port(self) -> int:
        servers = self._server.servers
        return int(servers[0].sockets[0].getsockname()[1]) if servers else 0

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)


def serve_status_page(status: StatusProvider, host: str, port: int, worklist: Worklist | None = None) -> StatusServer:
    """Start the app (:func:`create_app`) on ``host:port`` in a background thread and return its server."""
    server = StatusServer(create_app(status, worklist), host, port)
    server.start()
    return server
