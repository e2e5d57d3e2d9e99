"""Pseudonyms: keyed, deterministic, hex, and strict about the secret."""

from __future__ import annotations

import hashlib
import hmac
import logging

import pytest

from fairness_registry.pseudonym import MIN_SECRET_BYTES, PSEUDONYM_LENGTH, pseudonymise

SECRET_A = "a" * 32
SECRET_B = "b" * 32


def test_pseudonym_is_hmac_sha256_hex_of_the_patient_id() -> None:
    expected = hmac.new(SECRET_A.encode(), b"PID-001", hashlib.sha256).hexdigest()
    assert pseudonymise("PID-001", SECRET_A) == expected
    assert len(expected) == PSEUDONYM_LENGTH


def test_pseudonym_is_deterministic_for_a_secret_and_differs_across_secrets() -> None:
    first = pseudonymise("PID-001", SECRET_A)
    assert pseudonymise("PID-001", SECRET_A) == first
    assert pseudonymise("PID-001", SECRET_A.encode()) == first  # str and bytes secrets agree
    assert pseudonymise("PID-001", SECRET_B) != first
    assert pseudonymise("PID-002", SECRET_A) != first


def test_dicom_padding_does_not_change_the_pseudonym() -> None:
    assert pseudonymise("PID-001 ", SECRET_A) == pseudonymise("PID-001", SECRET_A)


def test_short_secret_is_refused_with_its_length_not_its_value() -> None:
    short = "s3cr3t-" + "x" * 20  # 27 bytes
    with pytest.raises(ValueError, match=f"27 bytes long; at least {MIN_SECRET_BYTES} bytes") as info:
        pseudonymise("PID-001", short)
    assert short not in str(info.value)


@pytest.mark.parametrize("patient_id", ["", "   "])
def test_empty_patient_id_is_refused(patient_id: str) -> None:
    with pytest.raises(ValueError, match="patient_id is empty"):
        pseudonymise(patient_id, SECRET_A)


def test_wrong_types_are_type_errors() -> None:
    with pytest.raises(TypeError, match="secret must be str or bytes"):
        pseudonymise("PID-001", 12345)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="patient_id must be str"):
        pseudonymise(12345, SECRET_A)  # type: ignore[arg-type]


def test_nothing_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        pseudonym = pseudonymise("PID-LOGCHECK", SECRET_A)
    assert "PID-LOGCHECK" not in caplog.text
    assert pseudonym not in caplog.text
