"""The node's web app. For now: the status page (health, studies, deliveries, dead letters, models).

The app gets what it shows through an injected ``status`` callable, so it imports nothing of the node.
"""

from __future__ import annotations

import html
import logging
import threading
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

logger = logging.getLogger(__name__)

StatusProvider = Callable[[], dict[str, Any]]


def create_app(status: StatusProvider) -> FastAPI:
    app = FastAPI(title="fairnode", description="fairnode status and review", version="0.1.0")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/status")
    def api_status() -> dict[str, Any]:
        return status()

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return render_status(status())

    return app


def _table(headers: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body or '<tr><td>none</td></tr>'}</tbody></table>"


_CSS = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#eee}"
)


def render_status(s: dict[str, Any]) -> str:
    """The status page as HTML (refreshes every 5 s)."""
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
    return f"""<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>fairnode status</title><style>{_CSS}</style></head><body>
<h1>fairnode {ae}</h1>
<p>DICOM port {port} &middot; free disk {free} MB</p>
<h2>Studies</h2>{studies}<h2>Recent studies</h2>{recent}<h2>Deliveries</h2>{deliveries}
<h2>Dead letters</h2><p>Re-send with <code>fairnode deliveries retry</code>.</p>{dead}<h2>Models in use</h2>{models}
</body></html>"""


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


def serve_status_page(status: StatusProvider, host: str, port: int) -> StatusServer:
    server = StatusServer(create_app(status), host, port)
    server.start()
    return server
