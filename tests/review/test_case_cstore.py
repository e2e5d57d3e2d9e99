"""A corrected SEG sent by dcmtk's storescu to the running node lands on the right case as ground truth.

The node (SCP, spool, assembler, job runner with the bundled CT model, SQLite registry) runs in this
process; a small CT phantom is sent, segmented and assessed; then the phantom's ground-truth SEG (which
references the CT series, as a viewer's corrected SEG does) is sent. It must become true Dice/NSD/HD95 of
that case (source ``c-store``), close it, and not start a new segmentation of the series; fairnode's own
SEGs sent back are set aside.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from cohorts import ct_abdomen
from cohorts.dicom_writer import write_study
from cohorts.subjects import draw_subject
from fairness_registry.db import get_engine
from fairness_registry.models import Case, CaseStructure, ReviewState
from fairnode.node import build_node
from fairnode.settings import load_settings
from review.case_files import locate_case_files
from review.corrections import evaluate_correction, read_seg
from tests.conftest import require_tool
from tests.peers import wait_for
from tests.review.case_samples import card_of


def _storescu(port: int, *files: Path, options: tuple[str, ...] = ()) -> None:
    """Send files with dcmtk (-R: propose only the SOP classes of the files, SEG among them)."""
    tool = require_tool("storescu")
    done = subprocess.run(
        [tool, "-R", *options, "-aet", "RADVIEWER", "-aec", "FAIRNODE", "127.0.0.1", str(port), *map(str, files)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(600)
def test_corrected_seg_by_cstore_lands_on_its_case(tmp_path: Path) -> None:
    subject = draw_subject("ct-abdomen", 3, 77)
    written = write_study(ct_abdomen.generate(subject, matrix=64, slice_thickness=5.0), subject, tmp_path / "c")
    settings = load_settings(
        None,
        data_dir=tmp_path / "node",
        bind="127.0.0.1",
        port=0,
        http_port=0,
        idle_seconds=0.5,
        min_free_disk_mb=10,
        quality_samples=2,
        pseudonym_secret="p" * 40,
    )
    node = build_node(settings)
    node.start()
    try:
        port = node.server.port
        _storescu(port, *written.image_paths)

        def finished(run: int) -> object:
            st = node.spool.study(written.study_uid)
            return st if st is not None and st.run == run and st.state in ("done", "failed") else None

        st = wait_for(lambda: finished(1), 400, "the CT to be processed", interval=0.5)
        assert st.state == "done", st.reason
        engine = get_engine(settings.registry)
        with Session(engine) as db:
            cases = db.exec(select(Case)).all()
            assert len(cases) == 1 and cases[0].id is not None
            case = cases[0]
            assert case.review_state is not None
        # fairnode's own SEG coming back (a PACS routing rule) is set aside: no truth, no new segmentation
        outputs = node.spool.outbox / written.study_uid / "run-1" / written.series_uid
        _storescu(port, outputs / "seg.dcm", outputs / "probability-seg.dcm", options=("-xr",))  # RLE maps
        st = wait_for(lambda: finished(2), 120, "fairnode's own SEGs to be set aside", interval=0.2)
        summary = json.loads((node.spool.outbox / written.study_uid / "run-2" / "summary.json").read_text())
        assert sorted(s["status"] for s in summary["series"]) == ["own-output", "own-output"]
        with Session(engine) as db:
            assert len(db.exec(select(Case)).all()) == 1
            rows = db.exec(select(CaseStructure).where(col(CaseStructure.case_id) == case.id)).all()
            assert rows and all(r.true_dice is None for r in rows)
        # the radiologist's corrected SEG (here: the phantom's truth) comes back by C-STORE
        _storescu(port, written.seg_path)
        st = wait_for(lambda: finished(3), 120, "the correction to be taken", interval=0.2)
        assert st.state == "done", st.reason
        summary = json.loads((node.spool.outbox / written.study_uid / "run-3" / "summary.json").read_text())
        statuses = {s["series_uid"]: (s["status"], s["reason"]) for s in summary["series"]}
        assert statuses.pop(written.seg_series_uid)[0] == "corrected"  # the SEGs set aside before stay so
        assert [status for status, _ in statuses.values()] == ["own-output", "own-output"]
        with Session(engine) as db:
            assert len(db.exec(select(Case)).all()) == 1, "the correction started a new segmentation"
            closed = db.get(Case, case.id)
            assert closed is not None
            if case.review_state is not ReviewState.NOT_NEEDED:
                assert closed.review_state is ReviewState.REVIEWED
            rows = db.exec(select(CaseStructure).where(col(CaseStructure.case_id) == case.id)).all()
        stored = {r.name: (r.true_dice, r.true_nsd, r.true_hd95_mm, r.truth_source) for r in rows}
        # the same scores computed here from the files on disk
        files = locate_case_files(
            settings.spool_dir, study_uid=written.study_uid, series_uid=written.series_uid, run=case.run
        )
        expected = evaluate_correction(read_seg(written.seg_path), files, card_of("ct-abdomen").labels)
        assert {t.structure: (t.dice, t.nsd, t.hd95_mm, "c-store") for t in expected} == stored
        assert all(0.0 <= t.dice <= 1.0 for t in expected)
    finally:
        node.stop()
