"""The pipeline's side of the registry: a study run's record kept, then written, once its results are out.

:func:`keep_and_write` is what :func:`fairnode.pipeline.process_study` calls last; :func:`pending_registry`
gives the job runners the kept records of a pipeline context to retry (:mod:`fairnode.registry_pending`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom

from fairnode.registry_pending import PendingRegistry, Written
from fairnode.registry_writes import REGISTRY_ERRORS, StudyRecord, StudyRegistry, write_record

if TYPE_CHECKING:
    from fairnode.pipeline import PipelineContext

logger = logging.getLogger(__name__)

__all__ = ["PipelineRegistry", "keep_and_write", "pending_registry"]


class PipelineRegistry(StudyRegistry):
    """:class:`~fairnode.registry_writes.StudyRegistry` on a pipeline context (no-op without a registry)."""

    def __init__(self, ctx: PipelineContext, header: pydicom.Dataset, study_uid: str):
        super().__init__(
            ctx.registry_session,
            secret=ctx.secret,
            options=ctx.registry_options,
            header=header,
            study_uid=study_uid,
            version_of=lambda model: ctx.models.get(model).card.version if model in ctx.models.folders else "",
        )


def keep_and_write(ctx: PipelineContext, record: StudyRecord, out_dir: Path, *, write: bool) -> None:
    """Keep the registry record of a study run on disk and, with ``write``, write it now.

    A registry that does not take it leaves it kept (retried by the job runner); either way the study's
    results stand.
    """
    if ctx.registry_session is None:
        return
    pending = pending_registry(ctx, out_dir)
    try:
        folder = pending.keep(record)
    except OSError as exc:  # cannot keep it (disk full?): write it now or lose it, never the results
        logger.error("study %s run %d: registry record not kept (%s); written now", record.study_uid, record.run, exc)
        try:
            write_record(record, ctx.registry_session, secret=ctx.secret, options=ctx.registry_options)
        except REGISTRY_ERRORS as again:
            logger.error("study %s run %d: registry rows lost: %s", record.study_uid, record.run, again)
        return
    if write and pending.write(folder) in (Written.AWAY, Written.KEPT):
        logger.warning(
            "study %s run %d: results written, registry rows kept in %s until the registry takes them",
            record.study_uid,
            record.run,
            folder,
        )


def pending_registry(ctx: PipelineContext, out_dir: Path | None = None) -> PendingRegistry:
    """The context's kept registry records (``ctx.registry_pending``, else ``out_dir/registry-pending``).

    Raises
    ------
    ValueError
        When the context has no registry, or neither a pending folder nor ``out_dir`` is given.
    """
    if ctx.registry_session is None:
        raise ValueError("this pipeline context has no registry: nothing is kept for it")
    root = ctx.registry_pending or (out_dir / "registry-pending" if out_dir is not None else None)
    if root is None:
        raise ValueError("no folder for kept registry records: set registry_pending on the pipeline context")
    return PendingRegistry(root, ctx.registry_session, secret=ctx.secret, options=ctx.registry_options)
