"""Where a study's outputs go after the gate: PASS to PACS, REVIEW forwarded, held or to the review destination."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.scu import Destination, Forwarder, ForwardSettings
from dicom_node.spool import Spool
from fairnode.node import JobRunner
from fairnode.pipeline import PipelineContext, SeriesOutcome, StudyOutcome
from fairnode.settings import load_settings

PACS = Destination("pacs", "PACS", "127.0.0.1", 1)
REVIEW = Destination("review", "REVIEWWS", "127.0.0.1", 2)


def _series(tmp: Path, uid: str, state: str | None) -> SeriesOutcome:
    s = SeriesOutcome(uid, "CT", "ct-abdomen", "rule", "done", review_state=state)
    for name in ("seg", "probability-seg", "uncertainty", "sr"):
        p = tmp / uid / f"{name}.dcm"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    s.seg_path, s.probability_seg_path = str(tmp / uid / "seg.dcm"), str(tmp / uid / "probability-seg.dcm")
    s.uncertainty_path, s.sr_path = str(tmp / uid / "uncertainty.dcm"), str(tmp / uid / "sr.dcm")
    return s


def _deliveries(tmp_path: Path, review: Destination | None) -> dict[str, list[str]]:
    spool = Spool(tmp_path / "spool")
    forwarder = Forwarder(spool, ForwardSettings(destinations=(PACS,), review=review))
    runner = JobRunner(spool, PipelineContext([], None, None, None, b""), forwarder)  # type: ignore[arg-type]
    outcome = StudyOutcome(
        "1.2.3",
        1,
        [
            _series(tmp_path, "1.1", "not_needed"),
            _series(tmp_path, "1.2", "forwarded"),
            _series(tmp_path, "1.3", "held"),
            _series(tmp_path, "1.4", "sent_for_review"),
        ],
        1.0,
    )
    if review is None:
        with pytest.raises(ValueError, match="no review destination"):
            runner._route("1.2.3", 1, outcome)
        return {}
    runner._route("1.2.3", 1, outcome)
    out: dict[str, list[str]] = {}
    for d in spool.deliveries():
        out.setdefault(d.destination, []).append(Path(d.path).parent.name)
    return out


def test_pass_and_forwarded_go_to_pacs_held_stays_review_goes_apart(tmp_path: Path) -> None:
    got = _deliveries(tmp_path, REVIEW)
    assert sorted(set(got["pacs"])) == ["1.1", "1.2"] and len(got["pacs"]) == 8  # four objects per series
    assert sorted(set(got["review"])) == ["1.4"] and len(got["review"]) == 4
    assert "1.3" not in got["pacs"] + got["review"]


def test_review_destination_route_without_destination_is_refused(tmp_path: Path) -> None:
    _deliveries(tmp_path, None)
    with pytest.raises(ValueError, match="needs review_destination"):
        load_settings(None, review_route="review-destination", pseudonym_secret="k" * 40)
    s = load_settings(
        None,
        review_route="review-destination",
        review_destination={"name": "review", "ae_title": "REVIEWWS", "host": "127.0.0.1", "port": 104},
        pseudonym_secret="k" * 40,
    )
    assert s.forwarding().review == Destination("review", "REVIEWWS", "127.0.0.1", 104)
    assert s.quality().review_route == "review-destination"


def test_the_lesion_steps_outputs_go_with_the_series(tmp_path: Path) -> None:
    s = _series(tmp_path, "1.5", "not_needed")
    lesions = {}
    for key in ("seg_path", "sr_path", "counterfactual_path"):
        lesions[key] = str(tmp_path / "1.5" / f"lesion-{key}.dcm")
        Path(lesions[key]).write_bytes(b"x")
    s.lesions = dict(lesions)
    assert s.outputs[-3:] == [Path(p) for p in lesions.values()] and len(s.outputs) == 7
    s.lesions["counterfactual_path"] = None  # the counterfactual switched off
    assert len(s.outputs) == 6
