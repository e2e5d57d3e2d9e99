"""Fairness audit run time on synthetic registries of 1,000 and 10,000 cases (SQLite).

    PYTHONPATH=. .venv/bin/python benchmarks/audit_speed.py [--cases 1000 10000] [--bootstrap 1000] [--no-pdf]

For each size, builds a SQLite registry in a temporary folder (migrated by ``fairness_registry.db.migrate``)
holding that many finished cases of three structures each, with demographics, acquisition, the spatial
summary and a correction for ~15% of cases (:func:`fairness_registry.audit.synthetic.synthetic_frame`,
~1.2 cases per patient, rows inserted in bulk, not through the crud functions, since only the audit is timed).
Then times each stage of what ``fairnode audit`` does: reading the frame (``load_frame``), the statistics
(``compute_audit``, default settings: 1,000 bootstrap resamples), the figures, and writing HTML + JSON and
the PDF, after one untimed warm-up audit (imports, font and template caches). Wall-clock on a machine that
may be shared: the load average is printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from fairness_registry.audit import AuditSettings
from fairness_registry.audit.compute import compute_audit
from fairness_registry.audit.data import load_frame
from fairness_registry.audit.plots import report_figures
from fairness_registry.audit.render import ReportMeta, build_report, render_html, render_pdf
from fairness_registry.audit.settings import REGION_KEYS
from fairness_registry.audit.synthetic import synthetic_frame
from fairness_registry.db import dispose_engines, get_engine, migrate, sqlite_url
from fairness_registry.models import Case, CaseStatus, CaseStructure, ReviewState, Route, Series, Study, Subject

console = Console()
START, END = date(2026, 7, 1), date(2026, 9, 30)


def _none(value: object) -> object:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def build_registry(url: str, n_cases: int, seed: int) -> int:
    """Insert ``n_cases`` finished cases; returns the number of (case, structure) rows."""
    frame = synthetic_frame(max(int(n_cases / 1.2), 1), seed=seed, effects={("sex", "F"): -0.04})
    keep = sorted(frame["case_id"].unique())[:n_cases]
    frame = frame[frame["case_id"].isin(keep)]
    with Session(get_engine(url)) as session:
        for pseudonym in frame["pseudonym"].unique():
            session.add(Subject(pseudonym=f"{pseudonym:0>64}"))
        session.flush()
        for number, (case_number, rows) in enumerate(frame.groupby("case_id", sort=True)):
            r = rows.iloc[0]
            study = Study(
                study_uid=f"1.2.826.0.1.3680043.8.498.{case_number}",
                pseudonym=f"{r['pseudonym']:0>64}",
                received_at=r["received_at"],
                study_date=r["study_date"],
                sex=r["sex"],
                age_years=int(r["age_years"]),
                age_band=r["age_band"],
                ethnic_group=None if r["ethnic_group"] == "unknown" else r["ethnic_group"],
                bmi=_none(r["bmi"]),
                bmi_band=None if r["bmi_band"] == "unknown" else r["bmi_band"],
                scanner_model=r["scanner_model"],
                site=r["site"],
                manufacturer=r["manufacturer"],
                slice_thickness_mm=float(r["slice_thickness_mm"]),
                kvp=float(r["kvp"]),
                contrast=bool(r["contrast"]),
            )
            session.add(study)
            session.flush()
            series = Series(study_id=study.id, series_uid=f"{study.study_uid}.1", modality="CT")
            session.add(series)
            session.flush()
            review = r["case_route"] == "REVIEW"
            case = Case(
                series_id=series.id,
                model="ct-abdomen",
                model_version="1.0.0",
                status=CaseStatus.DONE,
                route=Route(r["case_route"]),
                review_state=ReviewState.FORWARDED if review else ReviewState.NOT_NEEDED,
            )
            session.add(case)
            session.flush()
            for label, (_, s) in enumerate(rows.iterrows(), start=1):
                session.add(
                    CaseStructure(
                        case_id=case.id,
                        name=s["structure"],
                        label=label,
                        volume=float(s["volume"]),
                        rca_max_dice=float(s["rca_dice"]),
                        predicted_dice=float(s["predicted_dice"]),
                        predicted_low=float(s["predicted_low"]),
                        predicted_high=float(s["predicted_high"]),
                        route=Route(s["route"]),
                        regions={k: float(s[f"region_{k}"]) for k in REGION_KEYS},
                        true_dice=_none(float(s["true_dice"])),
                        true_nsd=_none(float(s["true_nsd"])),
                        true_hd95_mm=_none(float(s["true_hd95_mm"])),
                    )
                )
            if number % 1000 == 999:
                session.commit()
        session.commit()
    return len(frame)


def time_audit(url: str, settings: AuditSettings, pdf: bool) -> dict[str, float]:
    """Seconds per stage of one audit of the registry at ``url``."""
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    with Session(get_engine(url)) as session:
        frame: pd.DataFrame = load_frame(session, start=START, end=END, model="ct-abdomen")
    times["load_frame"] = (t1 := time.perf_counter()) - t0
    result = compute_audit(frame, settings=settings, label="2026Q3")
    times["compute_audit"] = (t2 := time.perf_counter()) - t1
    figures = report_figures(result, frame)
    times["figures"] = (t3 := time.perf_counter()) - t2
    html = render_html(build_report(result, ReportMeta("2026Q3", START, END, "ct-abdomen")), figures)
    times["html"] = (t4 := time.perf_counter()) - t3
    if pdf:
        render_pdf(html)
        times["pdf"] = time.perf_counter() - t4
    times["total"] = time.perf_counter() - t0
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--bootstrap", type=int, default=AuditSettings().bootstrap)
    parser.add_argument("--no-pdf", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = AuditSettings(bootstrap=args.bootstrap)
    table = Table(title=f"fairnode audit run time in seconds (SQLite, {settings.bootstrap} bootstrap resamples)")
    table.add_column("cases")
    table.add_column("rows")
    stages = ["load_frame", "compute_audit", "figures", "html", *([] if args.no_pdf else ["pdf"]), "total"]
    for stage in stages:
        table.add_column(stage, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.cases:
            url = sqlite_url(Path(tmp) / f"registry-{n}.db")
            migrate(url)
            t = time.perf_counter()
            rows = build_registry(url, n, seed=n)
            console.print(f"{n} cases ({rows} rows) inserted in {time.perf_counter() - t:.1f} s")
            if n == args.cases[0]:
                time_audit(url, settings, pdf=not args.no_pdf)  # warm-up: imports, font and template caches
            times = time_audit(url, settings, pdf=not args.no_pdf)
            table.add_row(str(n), str(rows), *(f"{times[s]:.1f}" for s in stages))
            dispose_engines()
    console.print(table)
    console.print(f"load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
