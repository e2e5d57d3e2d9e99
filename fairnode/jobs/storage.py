"""The one storage interface a worker needs: read a study's instances, write its outputs.

Receivers and workers share a folder (NFS in production, one local folder in tests): the receivers'
spools and outboxes live under it, and a task names files by their path *relative to that root*, so each
machine may mount it where it likes. An object store can follow by implementing :class:`SharedStorage`
(``local`` gives a readable local file for a reference, ``output_dir`` a folder whose files are
published when the task returns, ``ref`` names a local path for a task message).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class StorageError(ValueError):
    """A path outside the shared root, or a reference that leaves it."""


class SharedStorage(Protocol):
    """What receivers and workers need of the storage they share."""

    def ref(self, path: Path) -> str:
        """The reference of a local path (what a task message carries)."""
        ...

    def local(self, ref: str) -> Path:
        """A local path for a reference."""
        ...


class FolderStorage:
    """Shared storage as one folder every machine mounts (``jobs.shared_root``, default the data folder).

    Parameters
    ----------
    root
        The folder; references are POSIX paths relative to it.
    """

    def __init__(self, root: Path):
        self.root = root.resolve()

    def ref(self, path: Path) -> str:
        """The reference of ``path``, which must lie under the root."""
        try:
            return path.resolve().relative_to(self.root).as_posix()
        except ValueError as exc:
            raise StorageError(
                f"{path} is outside the shared storage root {self.root}; "
                "put the spool (data_dir) under jobs.shared_root"
            ) from exc

    def local(self, ref: str) -> Path:
        """The local path of ``ref``; a reference that climbs out of the root is refused."""
        path = (self.root / ref).resolve()
        if not path.is_relative_to(self.root):
            raise StorageError(f"reference {ref!r} leaves the shared storage root {self.root}")
        return path
