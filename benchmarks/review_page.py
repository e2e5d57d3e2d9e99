"""Load time of the case page for a 200-slice CT (512×512), in Chromium and over HTTP.

    PYTHONPATH=. .venv/bin/python benchmarks/review_page.py [--slices 200] [--matrix 512] [--scroll 30]

Builds one case the way the node leaves it (phantom CT from :mod:`cohorts`, fairnode's SEG and entropy map in
the spool's outbox, registry rows; the builder of the viewer tests, ``tests/review/case_samples.py``), serves
the review app on loopback (uvicorn, one process) and measures:

* Chromium (Debian's ``/usr/bin/chromium``, headless, 1280×800): time from navigation to the first slice
  decoded on screen, cold (the server decodes the series, SEG and map on this request) and warm (reload);
  then scrolling with the arrow key, each step timed until its slice is decoded (neighbours preloaded, as a
  radiologist scrolls);
* HTTP (httpx, no browser): the page cold and warm, one slice cold (rendered) and cached, and every slice
  rendered once with the overlay, and with overlay and heatmap.

Wall-clock on a machine that may be shared: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from fairness_registry import accounts
from fairness_registry.accounts import Role
from fairness_registry.db import dispose_engines, get_engine, migrate, sqlite_url
from review.app import build_context, serve
from review.config import ReviewSettings
from review.routes.cases import CACHE_KEY
from review.security import COOKIE_NAME, hash_password
from review.slices import SliceCache
from tests.review.case_samples import ct_case

console = Console()
PASSWORD = "benchmark-password-1"
CHROMIUM = Path("/usr/bin/chromium")


def _sign_in(client: httpx.Client) -> str:
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert token is not None
    client.post("/login", data={"username": "radiologist", "password": PASSWORD, "csrf_token": token.group(1)})
    return client.cookies.get(COOKIE_NAME) or ""


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _browser(base: str, case_id: int, scroll: int, rows: list[tuple[str, str]]) -> None:
    from playwright.sync_api import sync_playwright

    shown = "(document.getElementById('slice').complete && document.getElementById('slice').naturalWidth > 0)"
    decoded = f"() => {shown}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{base}/login")
        page.fill("input[name=username]", "radiologist")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_load_state()
        for label in ("cold: series, SEG and map decoded on this request", "warm: reload"):
            t0 = time.perf_counter()
            page.goto(f"{base}/cases/{case_id}")
            page.wait_for_function(decoded)
            rows.append((f"Chromium page to first slice on screen, {label}", _ms(time.perf_counter() - t0)))
        page.locator("#viewer").focus()
        steps: list[float] = []
        for _ in range(scroll):
            current = page.locator("#viewer").get_attribute("data-current")
            t0 = time.perf_counter()
            page.keyboard.press("ArrowDown")
            page.wait_for_function(
                f"() => document.getElementById('viewer').dataset.current !== '{current}' && {shown}"
            )
            steps.append(time.perf_counter() - t0)
        rows.append(
            (
                f"Chromium arrow-key scroll, {scroll} slices (mean / max per slice)",
                f"{_ms(statistics.mean(steps))} / {_ms(max(steps))}",
            )
        )
        browser.close()


def _http(
    base: str, cookie: str, case_id: int, n: int, context_extras: dict[str, object], rows: list[tuple[str, str]]
) -> None:
    with httpx.Client(base_url=base, cookies={COOKIE_NAME: cookie}, timeout=300) as client:
        cache = context_extras.get(CACHE_KEY)
        if isinstance(cache, SliceCache):
            cache.forget(case_id)  # the page below decodes the case again
        for label in ("cold", "warm"):
            t0 = time.perf_counter()
            assert client.get(f"/cases/{case_id}").status_code == 200
            rows.append((f"HTTP case page, {label}", _ms(time.perf_counter() - t0)))
        for label in ("rendered", "cached"):
            t0 = time.perf_counter()
            assert client.get(f"/cases/{case_id}/slices/{n // 2}.png?preset=bone").status_code == 200
            rows.append((f"HTTP one slice with overlay, {label}", _ms(time.perf_counter() - t0)))
        for heat in ("false", "true"):
            times = []
            for k in range(n):
                t0 = time.perf_counter()
                r = client.get(f"/cases/{case_id}/slices/{k}.png?preset=lung&overlay=true&heatmap={heat}")
                times.append(time.perf_counter() - t0)
                assert r.status_code == 200
            what = "overlay and heatmap" if heat == "true" else "overlay"
            rows.append(
                (
                    f"HTTP every slice rendered once with {what} (mean / p95)",
                    f"{_ms(statistics.mean(times))} / {_ms(sorted(times)[int(0.95 * len(times))])}",
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200, help="slices of the CT (about)")
    parser.add_argument("--matrix", type=int, default=512, help="rows and columns of the CT")
    parser.add_argument("--scroll", type=int, default=30, help="arrow-key steps timed in Chromium")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        url = sqlite_url(tmp / "registry.db")
        migrate(url)
        t0 = time.perf_counter()
        with Session(get_engine(url)) as session:
            case = ct_case(tmp / "spool", session, tmp / "cohort", matrix=args.matrix, thickness=191.0 / args.slices)
            accounts.create_user(
                session, username="radiologist", role=Role.RADIOLOGIST, password_hash=hash_password(PASSWORD)
            )
        n = int(case.labels.shape[0])
        rows.append(
            (
                f"case built: {n} slices of {args.matrix}×{args.matrix} (setup, not timed below)",
                f"{time.perf_counter() - t0:.1f} s",
            )
        )
        settings = ReviewSettings(session_secret="benchmark-session-secret-0123456789abcdef", first_admin=None)
        context = build_context(
            settings, data_dir=tmp, status=dict, registry_url=url, extras={"spool_dir": tmp / "spool"}
        )
        server = serve(context, "127.0.0.1", 0)
        base = f"http://127.0.0.1:{server.port}"
        try:
            if CHROMIUM.exists():
                _browser(base, case.case_id, args.scroll, rows)
            else:
                rows.append(("Chromium", "not installed at /usr/bin/chromium: skipped"))
            with httpx.Client(base_url=base) as client:
                cookie = _sign_in(client)
            _http(base, cookie, case.case_id, n, context.extras, rows)
        finally:
            server.stop()
            dispose_engines()
    table = Table(title=f"Case page, {n}-slice CT · load average {os.getloadavg()[0]:.2f} · {os.cpu_count()} CPUs")
    table.add_column("what")
    table.add_column("time", justify="right")
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)


if __name__ == "__main__":
    main()
