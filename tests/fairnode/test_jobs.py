"""Jobs without processes: the job table on both backends, the worker's idempotency, the receiver's side.

The end-to-end behaviour (real redis-server, receivers and workers) is in
``tests/integration/test_scale_out.py``; here each part is driven directly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import OperationalError as SAOperationalError
from sqlmodel import Session
from typer.testing import CliRunner

from cohorts import xr_knee
from cohorts.dicom_writer import write_study
from cohorts.subjects import draw_subject
from dicom_node.scu import Destination, Forwarder, ForwardSettings
from dicom_node.spool import Spool
from fairness_registry.db import alembic_config, get_engine, migrate
from fairness_registry.models import Job, Subject
from fairnode.jobs import dispatch, store, tasks
from fairnode.jobs.dispatch import Dispatcher
from fairnode.jobs.in_process import JobRunner
from fairnode.jobs.settings import JobSettings
from fairnode.jobs.storage import FolderStorage, StorageError
from fairnode.node import pipeline_context
from fairnode.settings import load_settings
from tests.fairness_registry.conftest import postgres_server, registry_url  # noqa: F401 (fixtures)

SECRET = "jobs-test-secret-" + "0" * 30


@pytest.fixture
def db(registry_url: str) -> Iterator[Session]:  # noqa: F811
    migrate(registry_url)
    with Session(get_engine(registry_url)) as s:
        yield s


def test_enqueue_take_finish_run_a_job_once_however_often_it_is_delivered(db: Session) -> None:
    queues = {"xr-knee": "xr-knee"}
    first = store.enqueue(db, study_uid="1.2.3", run=1, queues=queues, receiver="r1")
    again = store.enqueue(db, study_uid="1.2.3", run=1, queues=queues, receiver="r2")
    db.commit()
    assert [j.id for j in first] == [j.id for j in again] and again[0].receiver == "r1"
    assert store.backlog(db).queued == 1 and store.backlog(db).oldest_study_uid == "1.2.3"
    one = store.take(db, study_uid="1.2.3", run=1, model="xr-knee", queue="xr-knee", worker="w1")
    db.commit()
    assert one is not None and one.attempt == 1 and one.previous_worker is None
    # the broker gives the task to another worker (the first was lost): it takes the job over
    two = store.take(db, study_uid="1.2.3", run=1, model="xr-knee", queue="xr-knee", worker="w2")
    db.commit()
    assert two is not None and two.attempt == 2 and two.previous_worker == "w1"
    assert store.backlog(db).running == 1
    # a late result of the lost attempt is dropped; the holder's is recorded once
    assert not store.finish(db, job_id=one.job_id, attempt=1, ok=True, result={"series": []})
    assert store.finish(db, job_id=two.job_id, attempt=2, ok=True, result={"series": ["x"]})
    db.commit()
    assert store.take(db, study_uid="1.2.3", run=1, model="xr-knee", queue="xr-knee", worker="w3") is None
    job = store.of_study(db, "1.2.3", 1)[0]
    assert job.state == "done" and job.worker == "w2" and job.result == {"series": ["x"]}
    assert store.backlog(db).queued == store.backlog(db).running == 0


def test_the_registry_refuses_a_second_job_for_one_study_run_and_model(db: Session) -> None:
    db.add(Job(study_uid="1.2.3", run=1, model="xr-knee", queue="xr-knee", receiver="r1"))
    db.commit()
    db.add(Job(study_uid="1.2.3", run=1, model="xr-knee", queue="xr-knee", receiver="r2"))
    with pytest.raises(IntegrityError):
        db.commit()
    db.rollback()
    db.add(Job(study_uid="1.2.3", run=2, model="xr-knee", queue="xr-knee", receiver="r1"))  # a new run is new
    db.commit()


def test_revision_0005_goes_down_and_up_keeping_the_registry(registry_url: str) -> None:  # noqa: F811
    migrate(registry_url)
    engine = get_engine(registry_url)
    with Session(engine) as s:
        s.add(Subject(pseudonym="a" * 64))
        s.commit()
    for revision, present in (("0004_review_accounts", False), ("head", True)):
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            getattr(command, "downgrade" if revision != "head" else "upgrade")(config, revision)
        tables = set(sa.inspect(engine).get_table_names())
        assert ({"job", "job_worker"} <= tables) is present
        with engine.connect() as c:
            assert c.execute(sa.text("SELECT COUNT(*) FROM subject")).scalar() == 1


def test_heartbeats_and_counts_list_the_workers(db: Session) -> None:
    store.beat(db, name="w1@h", host="h", pid=10, queues=["xr-knee"], concurrency=2)
    db.commit()
    store.count(db, name="w1@h", ok=True, provider="CPUExecutionProvider")
    store.count(db, name="w1@h", ok=False, error="ValueError: bad pixels")
    db.commit()
    (w,) = store.workers(db)
    assert (w.jobs_done, w.jobs_failed, w.last_error, w.provider) == (
        1,
        1,
        "ValueError: bad pixels",
        "CPUExecutionProvider",
    )
    assert store.alive(w, heartbeat_seconds=5)
    store.beat(db, name="w1@h", host="h", pid=11, queues=["xr-knee"], concurrency=2)  # restarted: counts afresh
    db.commit()
    assert store.workers(db)[0].jobs_done == 0


def test_shared_storage_names_files_relative_to_its_root_and_refuses_others(tmp_path: Path) -> None:
    storage = FolderStorage(tmp_path / "shared")
    inside = tmp_path / "shared" / "recv" / "spool" / "a.dcm"
    assert storage.ref(inside) == "recv/spool/a.dcm" and storage.local("recv/spool/a.dcm") == inside.resolve()
    with pytest.raises(StorageError, match="outside the shared storage root"):
        storage.ref(tmp_path / "elsewhere.dcm")
    with pytest.raises(StorageError, match="leaves the shared storage root"):
        storage.local("../elsewhere.dcm")


def test_lesion_outputs_travel_as_shared_references_and_are_forwarded(tmp_path: Path) -> None:
    # a worker's outcome names its files by shared reference, the lesion step's too; the receiver forwards all
    storage = FolderStorage(tmp_path / "shared")
    out = tmp_path / "shared" / "work" / "series"
    lesions = {k: str(out / f"{k}.dcm") for k in ("seg_path", "sr_path", "counterfactual_path")}
    outcome = {"series": [{"series_uid": "1.2.3", "seg_path": str(out / "seg.dcm"), "lesions": dict(lesions)}]}
    shared = tasks._refs(json.loads(json.dumps(outcome)), storage)
    assert shared["series"][0]["lesions"]["counterfactual_path"] == "work/series/counterfactual_path.dcm"
    recorded = dispatch.RecordedSeries.from_result(shared["series"][0], storage)
    assert recorded.outputs == [(out / n).resolve() for n in ("seg.dcm", *(f"{k}.dcm" for k in lesions))]


class _Task:
    """The bound task argument: ``retry`` raises what Celery would."""

    def retry(self, exc: BaseException, countdown: float) -> BaseException:
        return RuntimeError(f"retry in {countdown}: {exc}")


def test_a_redelivered_task_finds_the_result_and_does_nothing_twice(
    tmp_path: Path,
    registry_url: str,  # noqa: F811 (the fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_settings(None, data_dir=tmp_path, registry_url=registry_url, pseudonym_secret=SECRET)
    tasks.configure(settings, "w2@test")
    calls: list[Any] = []
    monkeypatch.setattr(tasks, "process_study", lambda *a, **k: calls.append(a) or pytest.fail("pipeline ran"))
    migrate(registry_url)
    with Session(get_engine(registry_url)) as s:
        store.enqueue(s, study_uid="1.2.3", run=1, queues={"xr-knee": "xr-knee"}, receiver="r1")
        store.take(s, study_uid="1.2.3", run=1, model="xr-knee", queue="xr-knee", worker="w1@test")
        s.commit()
    # the lost first attempt finished the pipeline (summary written) but not the job
    summary = tmp_path / "recv" / "out" / "xr-knee" / "attempt-1" / "summary.json"
    summary.parent.mkdir(parents=True)
    seg = summary.parent / "1.9" / "seg.dcm"
    summary.write_text(
        json.dumps({"study_uid": "1.2.3", "run": 1, "series": [{"series_uid": "1.9", "seg_path": str(seg)}]})
    )
    kwargs: dict[str, Any] = {
        "study_uid": "1.2.3",
        "run": 1,
        "model": "xr-knee",
        "queue": "xr-knee",
        "files": ["recv/in/a.dcm"],
        "out": "recv/out",
    }
    assert tasks.process_job(_Task(), **kwargs) == {"state": "done", "attempt": 2}
    assert tasks.process_job(_Task(), **kwargs) == {"state": "already processed"}
    assert calls == []
    with Session(get_engine(registry_url)) as s:
        (job,) = store.of_study(s, "1.2.3", 1)
        assert job.attempt == 2 and job.result is not None
        assert job.result["series"][0]["seg_path"] == "recv/out/xr-knee/attempt-1/1.9/seg.dcm"


def test_a_worker_without_the_receivers_pseudonym_secret_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pseudonym secret"):
        tasks.configure(load_settings(None, data_dir=tmp_path / "fresh"))


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[Dispatcher, Spool, list[tuple[str, dict[str, Any]]]]]:
    """A receiver's dispatcher on a SQLite registry with one xr-knee study ready; published tasks recorded."""
    settings = load_settings(
        None,
        data_dir=tmp_path / "shared" / "recv",
        pseudonym_secret=SECRET,
        quality_enabled=False,
        jobs={"mode": "celery", "shared_root": str(tmp_path / "shared"), "enqueue_retry_seconds": 0.2},
    )
    spool = Spool(settings.spool_dir)
    written = write_study(
        xr_knee.generate(draw_subject("xr-knee", 0, 3)), draw_subject("xr-knee", 0, 3), tmp_path / "c"
    )
    for path in written.image_paths:
        import pydicom

        ds = pydicom.dcmread(path)
        spool.store(
            path.read_bytes(),
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            sop_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            calling_ae="SENDER",
        )
    spool.set_state(written.study_uid, "ready")
    forwarder = Forwarder(spool, ForwardSettings(destinations=(Destination("pacs", "PACS", "127.0.0.1", 1),)))
    published: list[tuple[str, dict[str, Any]]] = []
    d = Dispatcher(
        spool, forwarder, pipeline_context(settings), settings.jobs, tasks.shared_storage(settings), name="recv"
    )
    yield d, spool, published


def test_receiver_keeps_a_study_to_enqueue_while_the_broker_is_down_then_forwards_the_result(
    receiver: tuple[Dispatcher, Spool, list[tuple[str, dict[str, Any]]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    d, spool, published = receiver
    (study,) = spool.studies()

    def broker_down(app: Any, queue: str, payload: dict[str, Any]) -> None:
        raise KombuOperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(dispatch, "publish", broker_down)
    d.run_once()
    kept = spool.study(study.study_uid)
    assert kept is not None and kept.state == "ready" and "broker unavailable" in kept.reason
    status = d.status()
    assert status["to_enqueue"] == 1 and status["broker_ok"] is False and status["queued"] == 1
    monkeypatch.setattr(dispatch, "publish", lambda app, queue, payload: published.append((queue, payload)))
    time.sleep(0.25)  # the retry delay
    d.run_once()
    ((queue, payload),) = published
    assert (
        queue == "xr-knee"
        and payload["model"] == "xr-knee"
        and payload["out"] == f"recv/spool/outbox/{study.study_uid}/run-1"
    )
    assert all(not Path(f).is_absolute() and f.startswith("recv/spool/incoming/") for f in payload["files"])
    assert spool.study(study.study_uid).state == "processing"  # type: ignore[union-attr]
    # a worker records the outcome; the receiver forwards its files and finishes the study
    out = d.storage.local(payload["out"]) / "xr-knee" / "attempt-1" / "1.9"
    out.mkdir(parents=True)
    for name in ("seg.dcm", "sr.dcm"):
        (out / name).write_bytes(b"x")
    result = {
        "series": [
            {
                "series_uid": "1.9",
                "status": "done",
                "review_state": None,
                "seg_path": d.storage.ref(out / "seg.dcm"),
                "sr_path": d.storage.ref(out / "sr.dcm"),
            }
        ]
    }
    with d.session() as s:
        taken = store.take(s, study_uid=study.study_uid, run=1, model="xr-knee", queue="xr-knee", worker="w1")
        assert taken is not None
        store.finish(s, job_id=taken.job_id, attempt=taken.attempt, ok=True, result=result)
    assert d.run_once() == 1
    assert spool.study(study.study_uid).state == "done"  # type: ignore[union-attr]
    assert sorted(Path(x.path).name for x in spool.deliveries()) == ["seg.dcm", "sr.dcm"]
    assert d.status()["backlog"] == 0


def test_in_process_status_shows_the_backlog_and_the_oldest_waiting_study(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    runner = JobRunner(spool, None, None, jobs=JobSettings(backlog_warn_studies=0))  # type: ignore[arg-type]
    assert runner.status()["backlog"] == 0 and runner.status()["oldest_waiting"] is None


def test_worker_and_receiver_roles_need_celery_mode(tmp_path: Path) -> None:
    from fairnode.cli import app

    config = tmp_path / "node.yaml"
    config.write_text(f"data_dir: {tmp_path}\n")
    result = CliRunner().invoke(app, ["worker", "--config", str(config)])
    assert result.exit_code == 2 and "jobs.mode celery" in result.output
    result = CliRunner().invoke(app, ["serve", "--role", "receiver", "--config", str(config)])
    assert result.exit_code == 2 and "jobs.mode celery" in result.output
    result = CliRunner().invoke(app, ["worker", "--queues", "ct-liver", "--config", str(config)])
    assert result.exit_code == 2 and "not installed" in result.output


def test_receiver_keeps_a_study_to_enqueue_while_the_registry_is_down(
    receiver: tuple[Dispatcher, Spool, list[tuple[str, dict[str, Any]]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    d, spool, published = receiver
    (study,) = spool.studies()

    def registry_down(*args: Any, **kwargs: Any) -> Any:
        raise SAOperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(store, "enqueue", registry_down)
    monkeypatch.setattr(dispatch, "publish", lambda app, queue, payload: published.append((queue, payload)))
    d.run_once()
    kept = spool.study(study.study_uid)
    assert kept is not None and kept.state == "ready" and "registry unavailable" in kept.reason
    assert published == []


def test_status_page_lists_the_backlog_the_oldest_waiting_study_and_every_worker() -> None:
    from types import SimpleNamespace

    from review.deps import templates

    jobs = {
        "mode": "celery",
        "backlog": 150,
        "backlog_warn": 100,
        "backlog_high": True,
        "to_enqueue": 3,
        "broker_ok": False,
        "oldest_waiting": {"study_uid": "1.2.3.4", "waiting_s": 12.5},
        "workers": [
            {
                "name": "gpu1@h",
                "alive": True,
                "queues": "ct-abdomen",
                "provider": "CUDAExecutionProvider",
                "jobs_done": 41,
                "jobs_failed": 1,
                "last_error": "ValueError: bad geometry",
                "heartbeat_age_s": 1.0,
            }
        ],
    }
    status = {"ae_title": "FN", "dicom_port": 1, "studies": {}, "deliveries": {}, "recent_studies": [], "jobs": jobs}
    user = SimpleNamespace(role=SimpleNamespace(value="admin"), username="admin")
    html = templates.env.get_template("status.html").render(
        s=status, counts=None, waiting=0, open_states=[], user=user, request=SimpleNamespace()
    )
    for text in ("Backlog 150", "above 100", "<code>1.2.3.4</code> for 12.5 s", "broker down", "gpu1@h"):
        assert text in html, text
    assert "CUDAExecutionProvider</td><td>41</td><td>1</td><td>ValueError: bad geometry" in html


def test_a_study_no_model_takes_is_recorded_by_the_receiver_without_a_task(
    receiver: tuple[Dispatcher, Spool, list[tuple[str, dict[str, Any]]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fairness_registry.models import Series

    d, spool, published = receiver
    (study,) = spool.studies()
    d.ctx.rules = []
    monkeypatch.setattr(dispatch, "publish", lambda app, queue, payload: published.append((queue, payload)))
    d.run_once()
    assert published == [] and spool.study(study.study_uid).state == "done"  # type: ignore[union-attr]
    with d.session() as s:
        (series,) = s.exec(sa.select(Series)).scalars().all()
        assert series.selected_model is None and series.selection_reason
        assert store.of_study(s, study.study_uid, 1) == []


def test_a_worker_freezes_what_lives_as_long_as_it_before_its_pool_forks_and_after_loading_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    from fairnode.jobs import worker

    settings = load_settings(
        None,
        data_dir=tmp_path / "w",
        pseudonym_secret=SECRET,
        jobs={"mode": "celery", "shared_root": str(tmp_path / "shared"), "broker_url": "redis://127.0.0.1:1/0"},
    )
    frozen_at_start: list[int] = []

    def worker_main(self: Any, argv: list[str]) -> None:  # the pool would fork here
        frozen_at_start.append(gc.get_freeze_count())

    monkeypatch.setattr("celery.Celery.worker_main", worker_main)
    gc.unfreeze()
    try:
        worker.run_worker(settings, ["xr-knee"], 1, "w1")
        # the imported pipeline and its libraries: hundreds of thousands of objects
        assert frozen_at_start and frozen_at_start[0] > 100_000
        gc.unfreeze()
        state = tasks.WorkerState(settings, FolderStorage(tmp_path / "shared"), "w1")
        monkeypatch.setattr("fairnode.node.pipeline_context", lambda s: ["a model", {"its": "objects"}])
        assert gc.get_freeze_count() == 0
        assert state.ctx == ["a model", {"its": "objects"}]
        assert gc.get_freeze_count() > 0 and state.ctx is state.ctx  # built and frozen once
    finally:
        gc.unfreeze()
