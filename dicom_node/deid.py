"""Outbound de-identification: the PS3.15 Annex E Basic Application Level Confidentiality Profile.

The rules are the standard's own table (PS3.15 Table E.1-1, shipped as data in
``dicom_node/data/confidentiality_profile.csv``; neither pydicom nor deid ships it), applied by
:class:`Deidentifier` to every element at every depth of a copy of the dataset:

- ``X`` remove; ``Z`` empty value; ``D`` a dummy value of the element's VR; ``U`` a replacement UID;
  combined actions (``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``, ``X/Z/U*``) take the one that keeps the object
  valid: ``D`` over ``Z`` over ``X``, and ``U`` for UIDs;
- a sequence whose action is ``Z`` or ``D`` (e.g. an SR's Content Sequence) keeps its items, each
  de-identified by the same rules and, beyond them, with every free text, name, date, time and instance
  UID inside replaced (codes and numbers stay, so measurements survive); ``X`` removes it;
- private attributes are removed; an enabled option (``retain-patient-characteristics`` ...) applies its
  ``K`` (keep) entries; ``C`` (clean) entries are not implemented and fall back to the basic action.
- Patient ID and Patient's Name get a research pseudonym (a keyed hash, not the registry's pseudonym),
  so a research archive can group studies by patient without learning who the patient is.

UIDs are replaced by ``2.25.<keyed hash>`` (deterministic per secret) and each pair is kept in a mapping
table in the hospital's data folder (:class:`UidMap`), so results coming back can be re-identified.
Objects whose ``BurnedInAnnotation`` is ``YES`` are refused: the profile's Clean Pixel Data option is
not implemented.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import hmac
import logging
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence

__all__ = ["OPTIONS", "DeidentificationError", "Deidentifier", "ProfileRule", "UidMap", "load_profile"]

logger = logging.getLogger(__name__)

#: Options of Table E.1-1 that this implementation honours (their K entries), with their PS3.16 CID 7050 codes.
OPTIONS: dict[str, tuple[str, str]] = {
    "retain-long-full-dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain-patient-characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain-device-identity": ("113109", "Retain Device Identity Option"),
    "retain-institution-identity": ("113112", "Retain Institution Identity Option"),
}
BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
METHOD = "DICOM PS3.15 Annex E Basic Profile (fairnode)"  # LO: at most 64 characters

_DUMMY: dict[str, object] = {
    "PN": "ANONYMOUS",
    "LO": "ANONYMOUS",
    "SH": "ANON",
    "LT": "ANONYMOUS",
    "ST": "ANONYMOUS",
    "UT": "ANONYMOUS",
    "UC": "ANONYMOUS",
    "CS": "ANON",
    "AE": "ANON",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000D",
    "DS": "0",
    "IS": "0",
    "UR": "",
}


_KNOWN_MAX = 100_000  # UID pairs kept in memory per map (each also in the table)


class DeidentificationError(ValueError):
    """A dataset that cannot be de-identified safely (e.g. burned-in annotation)."""


@dataclass(frozen=True)
class ProfileRule:
    """One row of Table E.1-1: the tag pattern (8 hex digits, ``x`` any), the action, option actions."""

    pattern: str
    name: str
    basic: str
    options: dict[str, str]

    def matches(self, tag: int) -> bool:
        text = f"{tag:08x}"
        return all(p in ("x", t) for p, t in zip(self.pattern, text, strict=True))


def load_profile() -> list[ProfileRule]:
    """The rows of Table E.1-1 shipped with the package (the private-attribute row is handled apart)."""
    text = resources.files("dicom_node").joinpath("data/confidentiality_profile.csv").read_text(encoding="utf-8")
    lines = (line for line in text.splitlines() if not line.startswith("#"))
    rules = []
    for row in csv.DictReader(lines):
        pattern = row["tag"].lower()
        if len(pattern) != 8 or any(c not in "0123456789abcdefx" for c in pattern):
            continue  # "ggggeeee-where-gggg-is-odd": private attributes, removed by the private rule
        options = dict(item.split("=", 1) for item in row["options"].split())
        rules.append(ProfileRule(pattern, row["name"], row["basic"], options))
    return rules


class UidMap:
    """The hospital-side table of original -> replacement UIDs (SQLite, one file, safe across threads)."""

    def __init__(self, path: Path, secret: bytes):
        if not secret:
            raise ValueError("the UID map needs a non-empty secret (the node's pseudonymisation secret)")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._secret = secret
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS uid_map (original TEXT PRIMARY KEY, replacement TEXT NOT NULL UNIQUE,"
            " destination TEXT NOT NULL, first_sent_at TEXT NOT NULL)"
        )
        self._known: dict[str, str] = {}
        self._pending: list[tuple[str, str, str, str]] = []

    def _derive(self, uid: str) -> str:
        digest = hmac.new(self._secret, b"uid:" + uid.encode("ascii", "replace"), hashlib.sha256).digest()
        return f"2.25.{int.from_bytes(digest[:16], 'big')}"

    def replacement(self, uid: str, destination: str) -> str:
        """The replacement of ``uid`` (made and recorded the first time it is asked for)."""
        known = self._known.get(uid)
        if known is not None:
            return known
        new = self._derive(uid)
        with self._lock:
            self._pending.append((uid, new, destination, datetime.now(UTC).isoformat()))
            if len(self._known) >= _KNOWN_MAX:  # a cache of recent pairs only: the table holds them all
                self._known.clear()
            self._known[uid] = new
        return new

    def commit(self) -> None:
        """Write the pairs made since the last commit, in one transaction (before anything is sent)."""
        with self._lock:
            pending, self._pending = self._pending, []
            if not pending:
                return
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR IGNORE INTO uid_map (original, replacement, destination, first_sent_at)"
                    " VALUES (?, ?, ?, ?)",
                    pending,
                )

    def original(self, replacement: str) -> str | None:
        """Re-identification: the hospital's UID behind ``replacement`` (None when unknown)."""
        self.commit()
        with self._lock:
            row = self._db.execute("SELECT original FROM uid_map WHERE replacement = ?", (replacement,)).fetchone()
        return None if row is None else str(row[0])

    def research_patient_id(self, patient_id: str) -> str:
        """A research pseudonym for a patient (keyed hash; the patient's ID is not stored)."""
        digest = hmac.new(self._secret, b"patient:" + patient_id.encode("utf-8"), hashlib.sha256).hexdigest()
        return f"R{digest[:20].upper()}"

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Deidentifier:
    """Applies the basic profile (plus ``options``) to datasets bound for one destination."""

    def __init__(self, uid_map: UidMap, destination: str, options: Iterable[str] = ()):
        chosen = frozenset(options)
        unknown = sorted(chosen - OPTIONS.keys())
        if unknown:
            raise ValueError(f"unknown de-identification options {unknown}; accepted: {sorted(OPTIONS)}")
        self.uid_map = uid_map
        self.destination = destination
        self.options = chosen
        rules = load_profile()
        self._exact = {int(r.pattern, 16): r for r in rules if "x" not in r.pattern}
        self._masked = [r for r in rules if "x" in r.pattern]

    def _rule(self, tag: int) -> ProfileRule | None:
        rule = self._exact.get(tag)
        if rule is not None:
            return rule
        return next((r for r in self._masked if r.matches(tag)), None)

    def _action(self, rule: ProfileRule) -> str:
        if any(rule.options.get(o) == "K" for o in self.options):
            return "K"
        parts = rule.basic.replace("*", "").split("/")
        for action in ("U", "D", "Z", "X", "K", "C"):
            if action in parts:
                return "X" if action == "C" else action
        raise ValueError(f"unknown action {rule.basic!r} for {rule.name}")

    def apply(self, ds: Dataset) -> Dataset:
        """A de-identified copy of ``ds`` (file meta rebuilt); ``ds`` itself is not changed.

        Raises
        ------
        DeidentificationError
            when the pixel data carries burned-in annotation (``BurnedInAnnotation`` YES).
        """
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            raise DeidentificationError(
                f"SOP {ds.get('SOPInstanceUID', '?')} has burned-in annotation; "
                "Clean Pixel Data is not implemented, so it is not sent to a de-identifying destination"
            )
        patient_id = str(ds.get("PatientID", "") or "")
        out = copy.deepcopy(ds)
        self._clean(out)
        research_id = self.uid_map.research_patient_id(patient_id) if patient_id else "ANONYMOUS"
        out.PatientID = research_id
        out.PatientName = research_id
        out.PatientIdentityRemoved = "YES"
        out.DeidentificationMethod = METHOD
        codes = [BASIC_PROFILE, *(OPTIONS[o] for o in sorted(self.options))]
        out.DeidentificationMethodCodeSequence = Sequence([_code(value, meaning) for value, meaning in codes])
        if "retain-long-full-dates" not in self.options:
            out.LongitudinalTemporalInformationModified = "REMOVED"
        self._file_meta(ds, out)
        self.uid_map.commit()
        return out

    def _clean(self, ds: Dataset, within: bool = False) -> None:
        """Apply the rules to ``ds``; ``within``: inside a sequence the profile replaces (Z or D)."""
        for elem in list(ds):
            tag = int(elem.tag)
            if elem.tag.is_private:
                del ds[elem.tag]
                continue
            rule = self._rule(tag)
            action = self._action(rule) if rule is not None else None
            if elem.VR == "SQ":
                if action == "X":
                    del ds[elem.tag]
                    continue
                for item in elem.value:
                    self._clean(item, within or action in ("Z", "D"))
                continue
            if action is None and within:
                action = self._within(elem)
            if action is not None:
                self._apply(ds, elem, action)

    @staticmethod
    def _within(elem: DataElement) -> str | None:
        """Inside a replaced sequence (e.g. an SR content tree), free text, names, dates, times and
        instance UIDs that the table does not list are replaced too; codes and numbers stay."""
        if elem.VR in ("LT", "ST", "UT", "UC", "PN", "DA", "DT", "TM"):
            return "D"
        if elem.VR == "UI" and not str(elem.value or "").startswith("1.2.840.10008."):
            return "U"
        return None

    def _apply(self, ds: Dataset, elem: DataElement, action: str) -> None:
        if action == "K":
            return
        if action == "X":
            del ds[elem.tag]
        elif action == "Z":
            elem.value = None
        elif action == "U":
            if elem.VR == "UI" and elem.value:
                values = elem.value if elem.VM > 1 else [elem.value]
                new = [self.uid_map.replacement(str(v), self.destination) for v in values]
                elem.value = new if elem.VM > 1 else new[0]
            elif elem.VR != "UI":
                elem.value = None
        elif action == "D":
            dummy = _DUMMY.get(str(elem.VR))
            if dummy is None:
                del ds[elem.tag]  # no dummy for binary VRs: removing is the safe side
            else:
                elem.value = dummy

    @staticmethod
    def _file_meta(source: Dataset, out: Dataset) -> None:
        meta = FileMetaDataset()
        old = getattr(source, "file_meta", None)
        meta.MediaStorageSOPClassUID = out.SOPClassUID
        meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        if old is not None and "TransferSyntaxUID" in old:
            meta.TransferSyntaxUID = old.TransferSyntaxUID
        out.file_meta = meta


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item
