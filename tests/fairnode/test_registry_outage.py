"""The registry out of the clinical path: a refused registry write is kept on disk and written once later.

The first tests work on a real SQLite registry whose file is replaced by a folder while it "refuses" (the
driver's own "unable to open database file"), with no model run. The last one runs the node end to end:
a real PostgreSQL database that refuses connections (``ALLOW_CONNECTIONS false``) while Orthanc, as the
PACS, sends a CT study, and must still get the SEG and SR back; the case row appears once the
database takes connections again, exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import psycopg
import pydicom
import pytest
from sqlmodel import Session, col, select

from cohorts import ct_abdomen
from cohorts.dicom_writer import write_study
from cohorts.subjects import draw_subject
from fairness_registry.db import dispose_engines, get_engine, sqlite_url
from fairness_registry.models import Case, CaseStructure, Series, Study
from fairness_registry.settings import RegistrySettings
from fairnode.node import registry_sessions
from fairnode.registry_pending import PendingRegistry, RetryReport, Written
from fairnode.registry_writes import CaseResult, SeriesEntry, SeriesFactsRecord, StudyRecord, quality_from_dict
from quality.types import CaseQuality
from tests.fairness_registry.conftest import PG_USER, TEST_SECRET, PostgresServer, postgres_server  # noqa: F401
from tests.fairness_registry.quality_samples import review_quality
from tests.peers import free_port, run_orthanc, wait_for

STUDY_UID = "1.2.826.0.1.3680043.8.498.981"
LOCALISER_UID = "1.2.826.0.1.3680043.8.498.982"
CT_UID = "1.2.826.0.1.3680043.8.498.983"


def _header(series_uid: str, patient_id: str = "PID-OUTAGE", **values: object) -> pydicom.Dataset:
    """A header of the study: patient, study and series identifiers, sex, age, date, and ``values``."""
    ds = pydicom.Dataset()
    keywords = {"PatientID": patient_id, "StudyInstanceUID": STUDY_UID, "SeriesInstanceUID": series_uid}
    for keyword, value in {
        **keywords,
        "PatientSex": "F",
        "PatientAge": "061Y",
        "StudyDate": "20260301",
        **values,
    }.items():
        setattr(ds, keyword, value)
    return ds


def _record(patient_id: str = "PID-OUTAGE") -> StudyRecord:
    localiser = _header(LOCALISER_UID, patient_id, SliceThickness="10")
    ct = _header(CT_UID, patient_id, SliceThickness="1.25", KVP="120")
    result = CaseResult("done", "CT of the abdomen", {"inference": 1.5}, "1.2.3.4", "1.2.3.5", "held", ["CPU"])
    return StudyRecord(
        STUDY_UID,
        1,
        localiser,
        [
            SeriesEntry(SeriesFactsRecord(LOCALISER_UID, "CT", "", "Scout", 1), None, "localiser", "", localiser),
            SeriesEntry(
                SeriesFactsRecord(CT_UID, "CT", "ABDOMEN", "Abdomen", 40),
                "ct-abdomen",
                "CT of the abdomen",
                "1.0",
                ct,
                result,
                review_quality(),
            ),
        ],
    )


def _as_json(quality: CaseQuality | None) -> str:
    """The quality as JSON text (NaN written as NaN, so that equal qualities give equal text)."""
    assert quality is not None
    return json.dumps(asdict(quality), sort_keys=True)


class RefusingSqlite:
    """A SQLite registry that refuses while ``down``: its file is moved aside and a folder put in its place."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "registry.db"
        self.aside = folder / "registry.db.aside"
        self.url = sqlite_url(self.path)
        self.sessions = registry_sessions(self.url)  # migrated while up

    def down(self) -> None:
        dispose_engines()  # no pooled connection keeps the moved file open
        self.path.rename(self.aside)
        self.path.mkdir()

    def up(self) -> None:
        self.path.rmdir()
        self.aside.rename(self.path)
        dispose_engines()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RefusingSqlite]:
    yield RefusingSqlite(tmp_path)
    dispose_engines()


def _pending(root: Path, registry: RefusingSqlite) -> PendingRegistry:
    return PendingRegistry(root, registry.sessions, secret=TEST_SECRET.encode(), options=RegistrySettings())


def test_a_refused_write_is_kept_and_written_exactly_once_when_the_registry_returns(
    tmp_path: Path, registry: RefusingSqlite
) -> None:
    pending = _pending(tmp_path / "pending", registry)
    registry.down()
    folder = pending.keep(_record())
    assert pending.write(folder) is Written.AWAY
    assert pending.retry() == RetryReport(written=0, waiting=1, refused=0)
    attempts = json.loads((folder / "attempts.json").read_text(encoding="utf-8"))
    assert attempts["attempts"] == 2 and "OperationalError" in attempts["last_error"]
    # what is kept holds no pseudonym yet, and the record reads back whole
    kept = StudyRecord.from_dict(
        json.loads((folder / "record.json").read_text(encoding="utf-8")),
        lambda name: pydicom.dcmread(folder / name, force=True) if name else None,
    )
    assert _as_json(kept.series[1].quality) == _as_json(review_quality())
    assert kept.series[1].header is not None and kept.series[1].header.KVP == 120

    registry.up()
    assert pending.retry() == RetryReport(written=1, waiting=0, refused=0)
    assert pending.folders() == []
    # the same record kept and written again (a folder that outlived its write): its rows once
    assert pending.write(pending.keep(_record())) is Written.WRITTEN
    with Session(get_engine(registry.url)) as session:
        assert len(session.exec(select(Study)).all()) == 1
        assert sorted(s.series_uid for s in session.exec(select(Series)).all()) == [LOCALISER_UID, CT_UID]
        cases = session.exec(select(Case)).all()
        assert [(c.model, c.model_version, c.run, c.status) for c in cases] == [("ct-abdomen", "1.0", 1, "done")]
        case = cases[0]
        assert case.review_state == "held" and case.route == "REVIEW" and case.seg_sop_uid == "1.2.3.4"
        rows = session.exec(select(CaseStructure).where(col(CaseStructure.case_id) == case.id)).all()
        assert sorted(r.name for r in rows) == sorted(s.name for s in review_quality().structures)
        study = session.exec(select(Study)).one()
        assert study.slice_thickness_mm == 1.25 and study.sex == "F"  # the processed series' acquisition


def test_a_record_the_registry_rejects_as_wrong_is_set_aside_not_retried(
    tmp_path: Path, registry: RefusingSqlite
) -> None:
    pending = _pending(tmp_path / "pending", registry)
    assert pending.write(pending.keep(_record())) is Written.WRITTEN
    # the same StudyInstanceUID sent again for another patient: the registry refuses it for good
    assert pending.write(pending.keep(_record(patient_id="PID-OTHER"))) is Written.REFUSED
    assert pending.folders() == [] and len(pending.refused()) == 1
    reason = json.loads((pending.refused()[0] / "attempts.json").read_text(encoding="utf-8"))["last_error"]
    assert "already recorded for another patient" in reason and "PID" not in reason
    assert pending.retry() == RetryReport(written=0, waiting=0, refused=0)


def test_quality_reads_back_from_its_json_form() -> None:
    quality = review_quality()
    again = quality_from_dict(json.loads(_as_json(quality)))
    assert _as_json(again) == _as_json(quality)  # NaN (an HD95 of an empty mask) included
    assert again.structures[0].reasons == quality.structures[0].reasons and isinstance(again.reasons, tuple)


# -- the node end to end ---------------------------------------------------------------------------------------
def _allow_connections(server: PostgresServer, dbname: str, allow: bool) -> None:
    """Let the database take connections, or refuse them (and end the open ones): a real refusal."""
    with psycopg.connect(
        host=str(server.socket_dir), port=server.port, user=PG_USER, dbname="postgres", autocommit=True
    ) as c:
        c.execute(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS {'true' if allow else 'false'}")
        if not allow:
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))


@pytest.mark.timeout(600)
def test_registry_refusing_the_node_still_delivers_seg_and_sr_and_records_the_case_once_it_returns(
    tmp_path: Path,
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    from fairnode.node import build_node
    from fairnode.settings import load_settings

    dbname = "fairnode_outage"
    url = postgres_server.create_database(dbname)
    subject = draw_subject("ct-abdomen", 5, 93)
    written = write_study(ct_abdomen.generate(subject, matrix=64, slice_thickness=5.0), subject, tmp_path / "cohort")
    node_port = free_port()
    with run_orthanc(tmp_path / "orthanc", {"fairnode": ["FAIRNODE", "127.0.0.1", node_port]}) as pacs:
        pacs_destination = {"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}
        settings = load_settings(
            None,
            registry_url=url,  # the registry that will refuse
            destinations=[pacs_destination],
            data_dir=tmp_path / "node",
            bind="127.0.0.1",
            port=node_port,
            idle_seconds=0.5,
            min_free_disk_mb=10,
            pseudonym_secret=TEST_SECRET,
            quality_rca=False,
            quality_samples=2,
        )
        node = build_node(settings)  # migrates the registry while it is up
        node.start()
        try:
            study_id = pacs.upload(list(written.image_paths))
            _allow_connections(postgres_server, dbname, allow=False)
            with pacs.client() as c:  # the PACS sends the study while the registry refuses
                c.post(
                    "/modalities/fairnode/store", json={"Resources": [study_id], "Synchronous": True}
                ).raise_for_status()

                def modalities() -> list[str] | None:
                    found = c.post(
                        "/tools/find",
                        json={"Level": "Series", "Query": {"StudyInstanceUID": written.study_uid}, "Expand": True},
                    ).json()
                    names = sorted(s["MainDicomTags"].get("Modality", "") for s in found)
                    return names if "SEG" in names and "SR" in names else None

                # the results reach the PACS all the same ...
                arrived = wait_for(modalities, 300, "the SEG and SR to reach Orthanc", interval=0.5)
            assert arrived.count("SEG") >= 1 and arrived.count("SR") == 1
            st = node.spool.study(written.study_uid)
            assert st is not None and st.state == "done", st
            # ... the case is kept for the registry, not lost
            pending = settings.data_dir / "registry-pending"
            kept = [p for p in pending.iterdir() if p.is_dir() and p.name != "refused"]
            assert len(kept) == 1 and (kept[0] / "attempts.json").exists()
            assert node.status()["jobs"]["registry_pending"] == 1  # type: ignore[index]  # the status page says so

            _allow_connections(postgres_server, dbname, allow=True)

            def cases() -> list[tuple[str, int, str]] | None:
                if any(p.is_dir() and p.name != "refused" for p in pending.iterdir()):
                    return None
                with Session(get_engine(url)) as session:
                    return [(c.model, c.run, c.status) for c in session.exec(select(Case)).all()]

            assert wait_for(cases, 60, "the kept case to reach the registry") == [("ct-abdomen", 1, "done")]
            assert node.status()["jobs"]["registry_pending"] == 0  # type: ignore[index]
            node.runner.write_registry()  # type: ignore[attr-defined]  # another pass writes nothing twice
            assert cases() == [("ct-abdomen", 1, "done")]
        finally:
            node.stop()
            _allow_connections(postgres_server, dbname, allow=True)
