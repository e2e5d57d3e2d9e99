"""Shared test helpers: locating real peers (dcmtk, dicom3tools) and running them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
#: Where tests leave screenshots and rendered pages for people to look at (git-ignored).
ARTIFACTS = Path(
    os.environ.get("FAIRNODE_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "build" / "test-artifacts")
)


def require_tool(name: str) -> str:
    """Full path of a system tool; in CI a missing tool fails the test, elsewhere it skips it."""
    path = shutil.which(name, path="/usr/bin:/usr/sbin:/usr/local/bin")
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed; deploy/system-deps.sh should have installed it")
        pytest.skip(f"{name} is not installed (run deploy/system-deps.sh)")
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dciodvfy reports for one file (empty when the file is valid)."""
    tool = require_tool("dciodvfy")
    res = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]


SHIPPED_MODELS = Path(__file__).resolve().parents[1] / "inference" / "models"


def _fingerprints(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="session", autouse=True)
def shipped_models_are_left_alone() -> object:
    """No test may write into the shipped models (a calibration run on the real card instead of a copy)."""
    before = _fingerprints(SHIPPED_MODELS)
    yield
    after = _fingerprints(SHIPPED_MODELS)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"tests changed the shipped models in {SHIPPED_MODELS}: {changed}"


@pytest.fixture(scope="session", autouse=True)
def requested_associations_keep_their_responses() -> object:
    """Every association a test requests with pynetdicom gets its responses in the call that waits for them
    (:func:`dicom_node.scu.responses_only`), as the node's own SCU does: pynetdicom's reactor otherwise takes
    a fast peer's response now and then and the test's ``send_*`` call reports no status."""
    from pynetdicom.ae import ApplicationEntity

    from dicom_node.scu import responses_only

    associate = ApplicationEntity.associate

    def associate_keeping_responses(self: ApplicationEntity, *args: object, **kwargs: object) -> object:
        return responses_only(associate(self, *args, **kwargs))  # type: ignore[arg-type]

    associate_keeping_responses.__wrapped__ = associate  # type: ignore[attr-defined]  # pynetdicom's own
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ApplicationEntity, "associate", associate_keeping_responses)
        yield
