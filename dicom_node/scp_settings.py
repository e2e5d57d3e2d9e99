"""How the SCP listens, whom it accepts and which receiver serves the port."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dicom_node.guards import GuardSettings

__all__ = ["Receiver", "ScpSettings"]

#: ``native``: :mod:`dicom_node.native` (the fast C-ECHO/C-STORE acceptor); ``pynetdicom``: pynetdicom's
#: association server (:mod:`dicom_node.scp`)
Receiver = Literal["native", "pynetdicom"]


@dataclass(frozen=True)
class ScpSettings:
    """How the SCP listens and whom it accepts.

    ``acse_timeout_seconds``: how long a new connection may take to send its A-ASSOCIATE-RQ (ARTIM);
    ``network_timeout_seconds``: how long an established association may stay silent before it is
    aborted (both the native receiver's; pynetdicom uses its own defaults).
    """

    ae_title: str = "FAIRNODE"
    bind: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aes: tuple[str, ...] = field(default_factory=tuple)
    require_called_ae: bool = True
    max_associations: int = 10
    min_free_disk_mb: int = 1024
    max_pdu_bytes: int = 4 * 1024 * 1024
    guards: GuardSettings = field(default_factory=GuardSettings)
    receiver: Receiver = "native"
    acse_timeout_seconds: float = 30.0
    network_timeout_seconds: float = 60.0
