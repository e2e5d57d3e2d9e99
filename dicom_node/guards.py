"""Resource guards of the SCP: what the node refuses before it would run out of something.

Two places apply them, each with the answer meant for its refusal:

- when an association is requested (:class:`AssociationGuard`, bound to ``EVT_REQUESTED``): the global
  and per calling AE association caps, and the disk watermark. A refusal is an A-ASSOCIATE-RJ
  *rejected-transient* (:class:`~dicom_node.status.AssociationRejection`), so a sender retries later.
- on each C-STORE (:class:`StoreGuards`, called first in the handler): the disk watermark, the maximum
  instance size, the per calling AE rate limit and the bound on the backlog of unprocessed studies. A
  refusal is one of the *Refused: Out of Resources* (A7xx) statuses of :class:`~dicom_node.status.StoreStatus`.

Each check is a small function that returns ``None`` (admitted) or a :class:`Refusal` naming the measured
value and the limit; the caller logs it and answers. Nothing here decodes pixel data.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pynetdicom import evt
from pynetdicom.events import Event

from dicom_node.status import AssociationRejection, StoreStatus

logger = logging.getLogger(__name__)

__all__ = [
    "AssociationGuard",
    "DiskGuard",
    "GuardSettings",
    "RateLimiter",
    "Refusal",
    "StoreGuards",
]


class GuardSettings(BaseModel):
    """Limits of the SCP beside ``max_associations`` and ``min_free_disk_mb`` (0 switches a limit off).

    Attributes
    ----------
    max_associations_per_ae : int
        Concurrent associations one calling AE title may hold; more are rejected (transient, local limit
        exceeded). 0: only the global ``max_associations`` applies.
    max_instance_mb : float
        Largest encoded instance accepted, in MB (10**6 bytes); larger ones are answered
        ``INSTANCE_TOO_LARGE`` (0xA701) and not written.
    rate_per_ae : float
        Instances per second one calling AE title may store (token bucket); 0: no limit.
    rate_burst : int
        Instances a calling AE may store at once above its rate (the bucket's size).
    rate_wait_seconds : float
        How long a store waits for the bucket to refill before it is answered ``RATE_LIMITED`` (0xA702):
        short bursts are slowed down rather than refused.
    max_backlog_studies : int
        Studies not yet processed (receiving, ready or processing) the spool may hold; an instance of a
        new study beyond it is answered ``BACKLOG_FULL`` (0xA703), while instances of studies already in
        the spool are still accepted so that they can complete. 0: no limit.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_associations_per_ae: int = Field(0, ge=0, description="0: no per-AE cap")
    max_instance_mb: float = Field(2048.0, ge=0, description="0: no size limit")
    rate_per_ae: float = Field(0.0, ge=0, description="instances per second per calling AE; 0: no limit")
    rate_burst: int = Field(200, ge=1)
    rate_wait_seconds: float = Field(2.0, ge=0)
    max_backlog_studies: int = Field(0, ge=0, description="0: no limit")


@dataclass(frozen=True)
class Refusal:
    """Why something was refused: a human-readable reason with the measured value and the limit."""

    reason: str


class DiskGuard:
    """Says whether the spool's file system has room (free space at or above the watermark)."""

    def __init__(self, folder: Path, min_free_mb: int):
        self.folder = folder
        self.min_free = min_free_mb * 1024 * 1024

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.folder).free

    def ok(self) -> bool:
        return self.free_bytes() >= self.min_free

    def check(self) -> Refusal | None:
        free = self.free_bytes()
        if free < self.min_free:
            return Refusal(
                f"free disk {free // (1024 * 1024)} MB is below the watermark of {self.min_free // (1024 * 1024)} MB"
            )
        return None


class RateLimiter:
    """A token bucket per key (calling AE title): ``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        if rate <= 0:
            raise ValueError(f"rate must be > 0 instances per second; got {rate}")
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def _take(self, key: str) -> float:
        """Take a token if there is one: returns 0, else the seconds until one is there."""
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def acquire(self, key: str, wait_seconds: float) -> bool:
        """Take one token for ``key``, waiting up to ``wait_seconds`` for it; returns whether it got one."""
        deadline = self._clock() + wait_seconds
        pause = threading.Event()  # never set: a wait that cannot be cut short by anything but its timeout
        while True:
            needed = self._take(key)
            if needed == 0.0:
                return True
            left = deadline - self._clock()
            if needed > left:
                return False
            pause.wait(needed)


def check_size(nbytes: int, max_mb: float) -> Refusal | None:
    """A refusal when an encoded instance of ``nbytes`` is above ``max_mb`` MB (0: no limit)."""
    if max_mb and nbytes > max_mb * 1e6:
        return Refusal(f"instance of {nbytes / 1e6:.1f} MB is above the limit of {max_mb:g} MB")
    return None


def check_backlog(pending: int, limit: int) -> Refusal | None:
    """A refusal when ``pending`` unprocessed studies already fill the backlog of ``limit`` (0: no limit)."""
    if limit and pending >= limit:
        return Refusal(f"{pending} studies wait to be processed; the backlog limit is {limit}")
    return None


class StoreGuards:
    """The checks the C-STORE handler runs before it writes anything.

    Parameters
    ----------
    disk
        the disk watermark.
    settings
        the other limits.
    pending_studies
        counts the studies not yet processed (the spool's backlog).
    study_known
        whether the spool already holds instances of a study (those are admitted past the backlog limit).
    """

    def __init__(
        self,
        disk: DiskGuard,
        settings: GuardSettings,
        pending_studies: Callable[[], int],
        study_known: Callable[[str], bool],
    ):
        self.disk = disk
        self.settings = settings
        self._pending = pending_studies
        self._known = study_known
        self.rate = RateLimiter(settings.rate_per_ae, settings.rate_burst) if settings.rate_per_ae else None

    def check(self, *, calling_ae: str, nbytes: int) -> tuple[StoreStatus, Refusal] | None:
        """Before decoding: None when the store may go ahead, else the status to answer and why."""
        refusal = self.disk.check()
        if refusal:
            return StoreStatus.OUT_OF_RESOURCES, refusal
        refusal = check_size(nbytes, self.settings.max_instance_mb)
        if refusal:
            return StoreStatus.INSTANCE_TOO_LARGE, refusal
        if self.rate is not None and not self.rate.acquire(calling_ae, self.settings.rate_wait_seconds):
            return StoreStatus.RATE_LIMITED, Refusal(
                f"more than {self.settings.rate_per_ae:g} instances/s (burst {self.settings.rate_burst}) "
                f"from this calling AE"
            )
        return None

    def check_study(self, study_uid: str) -> tuple[StoreStatus, Refusal] | None:
        """Once the Study Instance UID is known: refuse a new study while the backlog is full."""
        if self.settings.max_backlog_studies and not self._known(study_uid):
            refusal = check_backlog(self._pending(), self.settings.max_backlog_studies)
            if refusal:
                return StoreStatus.BACKLOG_FULL, refusal
        return None


class AssociationGuard:
    """Admits or rejects association requests (bound to ``EVT_REQUESTED``).

    Admitted associations are marked on the association object (with their calling AE); the count of
    live marked associations (global and per calling AE) is what the caps are checked against, so an
    association that ends in any way (release, abort, dropped connection) stops counting by itself.
    Requests from calling AEs off the allow-list are left to pynetdicom's rejection and never count.
    """

    MARK = "fairnode_admitted"

    def __init__(self, disk: DiskGuard, max_associations: int, max_per_ae: int):
        self.disk = disk
        self.max_associations = max_associations
        self.max_per_ae = max_per_ae
        self._lock = threading.Lock()
        self._held: dict[object, str] = {}  # admitted through admit(): key -> calling AE title

    def check(self, calling_ae: str, active_aes: list[str]) -> tuple[AssociationRejection, Refusal] | None:
        """None to admit a request from ``calling_ae`` while ``active_aes`` hold associations, else why not."""
        if len(active_aes) >= self.max_associations:
            return AssociationRejection.LOCAL_LIMIT_EXCEEDED, Refusal(
                f"{len(active_aes)} associations open; the limit is {self.max_associations}"
            )
        if self.max_per_ae:
            mine = sum(1 for ae in active_aes if ae == calling_ae)
            if mine >= self.max_per_ae:
                return AssociationRejection.LOCAL_LIMIT_EXCEEDED, Refusal(
                    f"{mine} associations open from this calling AE; the limit per AE is {self.max_per_ae}"
                )
        refusal = self.disk.check()
        if refusal:
            return AssociationRejection.LOCAL_LIMIT_EXCEEDED, refusal
        return None

    def admit(self, key: object, calling_ae: str, address: str) -> tuple[AssociationRejection, Refusal] | None:
        """For a receiver that tracks associations itself: admit ``key`` (held until :meth:`release`) or
        say why not (logged here, as :meth:`on_requested` does)."""
        with self._lock:
            verdict = self.check(calling_ae, list(self._held.values()))
            if verdict is None:
                self._held[key] = calling_ae
                return None
        self._log_refusal(calling_ae, address, *verdict)
        return verdict

    def release(self, key: object) -> None:
        """The association admitted as ``key`` has ended (any way); it stops counting."""
        with self._lock:
            self._held.pop(key, None)

    def held(self) -> int:
        """Associations admitted through :meth:`admit` and not yet released."""
        with self._lock:
            return len(self._held)

    @staticmethod
    def _log_refusal(calling: str, address: object, rejection: AssociationRejection, refusal: Refusal) -> None:
        logger.warning(
            "association from %s at %s refused (%s): %s",
            calling,
            address,
            rejection.name.lower().replace("_", " "),
            refusal.reason,
        )

    def on_requested(self, event: Event) -> None:
        """``EVT_REQUESTED`` handler: reject (A-ASSOCIATE-RJ, transient) or mark the association admitted."""
        assoc = event.assoc
        request = assoc.requestor.primitive  # requestor.ae_title is only filled in after negotiation
        calling = str(request.calling_ae_title if request is not None else assoc.requestor.ae_title).strip()
        allowed = [t.strip() for t in assoc.ae.require_calling_aet]
        if allowed and calling not in allowed:
            return  # pynetdicom rejects it (calling AE title not recognised); it never counts
        with self._lock:
            active = [
                str(getattr(a, self.MARK)).strip()
                for a in assoc.ae.active_associations
                if a is not assoc and getattr(a, self.MARK, False)
            ]
            verdict = self.check(calling, active)
            if verdict is None:
                setattr(assoc, self.MARK, calling)
                return
        rejection, refusal = verdict
        self._log_refusal(calling, assoc.requestor.address, rejection, refusal)
        assoc.refusal_reason = refusal.reason  # type: ignore[attr-defined]  # read by audit handlers
        assoc.acse.send_reject(*rejection.value)
        evt.trigger(assoc, evt.EVT_REJECTED, {})  # as pynetdicom does for its own rejections
        assoc.kill()
