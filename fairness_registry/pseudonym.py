"""Pseudonyms: a keyed hash of the patient ID, the only link between a patient's studies in the registry.

The pseudonym is ``HMAC-SHA256(secret, patient_id)`` in lower-case hex (64 characters). Without the secret it
cannot be reversed or recomputed from a guessed ID; with it, the same patient always gets the same
pseudonym. Keep the secret out of the database and out of logs; changing it starts new pseudonyms for
everyone. Generate one with ``python -c "import secrets; print(secrets.token_hex(32))"``.

Nothing here logs the patient ID, the secret or the pseudonym.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["MIN_SECRET_BYTES", "PSEUDONYM_LENGTH", "UNLINKED", "pseudonym_of", "pseudonymise"]

#: Shortest accepted secret, in bytes (after UTF-8 encoding of a ``str``): the SHA-256 output size.
MIN_SECRET_BYTES = 32
#: Length of a pseudonym in characters (hex of a SHA-256 digest).
PSEUDONYM_LENGTH = 64
#: The one subject under which studies without a PatientID are recorded (not hex: never a patient's pseudonym).
UNLINKED = "unlinked"


def _secret_bytes(secret: str | bytes) -> bytes:
    """The secret as bytes, checked for length (the message names the length, never the secret)."""
    if isinstance(secret, str):
        key = secret.encode("utf-8")
    elif isinstance(secret, bytes):
        key = secret
    else:
        raise TypeError(f"secret must be str or bytes, got {type(secret).__name__}")
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the pseudonymisation secret is {len(key)} bytes long; at least {MIN_SECRET_BYTES} bytes are "
            'required (generate one with: python -c "import secrets; print(secrets.token_hex(32))")'
        )
    return key


def pseudonymise(patient_id: str, secret: str | bytes) -> str:
    """The registry pseudonym of a patient ID.

    Parameters
    ----------
    patient_id : str
        DICOM PatientID. Leading and trailing whitespace is removed first (DICOM pads values with
        spaces), so ``"123 "`` and ``"123"`` give the same pseudonym; nothing else is changed.
    secret : str or bytes
        At least :data:`MIN_SECRET_BYTES` bytes (a ``str`` is UTF-8 encoded).

    Returns
    -------
    str
        64 lower-case hex characters, deterministic for a given (patient ID, secret) pair.

    Raises
    ------
    ValueError
        When the secret is shorter than :data:`MIN_SECRET_BYTES` bytes, or the patient ID is empty.
    TypeError
        When either argument has the wrong type.
    """
    key = _secret_bytes(secret)
    if not isinstance(patient_id, str):
        raise TypeError(f"patient_id must be str, got {type(patient_id).__name__}")
    normalised = patient_id.strip()
    if not normalised:
        raise ValueError("patient_id is empty (or only whitespace); a study without a PatientID cannot be linked")
    return hmac.new(key, normalised.encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonym_of(patient_id: object, secret: str | bytes) -> str:
    """The pseudonym of a header's PatientID, or :data:`UNLINKED` when the study has none.

    A study without a PatientID (missing, not text, empty or only spaces) is still served: it is recorded
    under the shared :data:`UNLINKED` subject, which links it to no other study and holds no demographics.
    The secret is checked either way.
    """
    key = _secret_bytes(secret)
    if not isinstance(patient_id, str) or not patient_id.strip():
        return UNLINKED
    return pseudonymise(patient_id, key)
