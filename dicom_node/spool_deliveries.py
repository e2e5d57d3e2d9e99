"""The spool's deliveries: one row per result and destination, with its state, attempts and next try."""

from __future__ import annotations

import time
from pathlib import Path

from dicom_node.spool_index import Delivery, SpoolIndex

__all__ = ["SpoolDeliveries"]


class SpoolDeliveries(SpoolIndex):
    """Recording, listing and retrying deliveries (persisted before anything is sent)."""

    def add_delivery(self, study_uid: str, run: int, path: Path, destination: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO deliveries (study_uid, run, path, destination, state, next_attempt_at) "
                "VALUES (?,?,?,?, 'pending', ?)",
                (study_uid, run, str(path), destination, now),
            )

    def due_deliveries(self, now: float | None = None) -> list[Delivery]:
        now = time.time() if now is None else now
        rows = self._conn().execute(
            "SELECT * FROM deliveries WHERE state='pending' AND next_attempt_at<=? ORDER BY id", (now,)
        )
        return [_delivery(r) for r in rows]

    def deliveries(self, state: str | None = None) -> list[Delivery]:
        if state is None:
            rows = self._conn().execute("SELECT * FROM deliveries ORDER BY id")
        else:
            rows = self._conn().execute("SELECT * FROM deliveries WHERE state=? ORDER BY id", (state,))
        return [_delivery(r) for r in rows]

    def delivery_result(
        self, delivery_id: int, *, ok: bool, error: str = "", next_attempt_at: float = 0.0, dead: bool = False
    ) -> None:
        with self._tx() as db:
            if ok:
                db.execute(
                    "UPDATE deliveries SET state='sent', attempts=attempts+1, last_error='' WHERE id=?",
                    (delivery_id,),
                )
            else:
                db.execute(
                    "UPDATE deliveries SET state=?, attempts=attempts+1, last_error=?, next_attempt_at=? WHERE id=?",
                    ("dead" if dead else "pending", error, next_attempt_at, delivery_id),
                )

    def retry_dead(self, now: float | None = None) -> int:
        """Give every dead delivery a fresh retry budget; returns how many."""
        now = time.time() if now is None else now
        with self._tx() as db:
            return db.execute(
                "UPDATE deliveries SET state='pending', attempts=0, next_attempt_at=? WHERE state='dead'", (now,)
            ).rowcount



def _delivery(r: tuple[object, ...]) -> Delivery:
    return Delivery(
        id=int(r[0]),  # type: ignore[call-overload]
        study_uid=str(r[1]),
        run=int(r[2]),  # type: ignore[call-overload]
        path=Path(str(r[3])),
        destination=str(r[4]),
        state=str(r[5]),
        attempts=int(r[6]),  # type: ignore[call-overload]
        next_attempt_at=float(r[7]),  # type: ignore[arg-type]
        last_error=str(r[8]),
    )
