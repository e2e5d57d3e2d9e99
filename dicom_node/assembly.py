"""Study assembly: decide when a study that is still ``receiving`` is complete and mark it ``ready``.

A study is ready when any of these holds (PACS send studies series by series with no "end" message):

- it has been idle (no new instance) for ``idle_seconds``;
- every series description in ``required_series`` (regexes) is present and it has been idle for
  ``required_idle_seconds`` (a short grace for the last instances of those series);
- ``forced_seconds`` have passed since its first instance, however busy it still is.

The state lives in the spool's index, so a restart resumes pending studies where they were.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pydicom

from dicom_node.spool import Spool, StudyState

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AssemblySettings:
    idle_seconds: float = 10.0
    required_series: tuple[str, ...] = field(default_factory=tuple)
    required_idle_seconds: float = 2.0
    forced_seconds: float = 900.0
    poll_seconds: float = 0.2


def ready_reason(
    study: StudyState, now: float, settings: AssemblySettings, descriptions: list[str] | None = None
) -> str | None:
    """Why ``study`` is complete at ``now`` (seconds since the epoch), or None while it is not.

    ``descriptions`` are the SeriesDescriptions present (only needed when required series are set).
    """
    idle = now - study.last_received
    if idle >= settings.idle_seconds:
        return f"idle for {idle:.1f} s (limit {settings.idle_seconds:g} s)"
    if settings.required_series and descriptions is not None and idle >= settings.required_idle_seconds:
        missing = [p for p in settings.required_series if not any(re.search(p, d, re.I) for d in descriptions)]
        if not missing:
            return f"required series present ({', '.join(settings.required_series)})"
    age = now - study.first_received
    if age >= settings.forced_seconds:
        return f"forced after {age:.0f} s (limit {settings.forced_seconds:g} s)"
    return None


def series_descriptions(spool: Spool, study_uid: str) -> list[str]:
    """SeriesDescription of each series of a study (read from one header per series)."""
    first: dict[str, str] = {}
    for rec in spool.instances(study_uid):
        first.setdefault(rec.series_uid, str(rec.path))
    out = []
    for path in first.values():
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesDescription"])
        out.append(str(ds.get("SeriesDescription", "")))
    return out


class Assembler:
    """Polls ``receiving`` studies and marks complete ones ``ready``; runs in its own thread."""

    def __init__(self, spool: Spool, settings: AssemblySettings, on_ready: Callable[[], None] | None = None):
        self.spool = spool
        self.settings = settings
        self.on_ready = on_ready
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self, now: float | None = None) -> list[str]:
        """One pass: returns the study UIDs it marked ready."""
        now = time.time() if now is None else now
        marked = []
        for study in self.spool.studies("receiving"):
            descriptions = series_descriptions(self.spool, study.study_uid) if self.settings.required_series else None
            reason = ready_reason(study, now, self.settings, descriptions)
            if reason and self.spool.set_state(study.study_uid, "ready", expect="receiving", reason=reason):
                logger.info("study %s run %d ready: %s", study.study_uid, study.run, reason)
                marked.append(study.study_uid)
        if marked and self.on_ready is not None:
            self.on_ready()
        return marked

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="assembler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.poll_seconds):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
