"""Registry settings: the ethnic group mapping table, the site name stored with each study, and how long a
write waits for a registry that does not answer.

Part of the node's settings as ``Settings.registry_options`` (YAML key ``registry_options``, environment
``FAIRNODE_REGISTRY_OPTIONS__<FIELD>``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fairness_registry.db import (
    DEFAULT_CONNECT_TIMEOUT_S,
    MIN_CONNECT_TIMEOUT_S,
    SQLITE_BUSY_TIMEOUT_S,
    EngineOptions,
)
from fairness_registry.ethnic_groups import EthnicGroupMapping, default_mapping
from fairness_registry.models import LO_LENGTH

__all__ = ["RegistrySettings"]


class RegistrySettings(BaseModel):
    """What the registry records beside the header values.

    Attributes
    ----------
    ethnic_groups : pathlib.Path or None
        The EthnicGroup mapping table (YAML, format in the shipped ``fairness_registry/ethnic_groups.yaml``);
        ``None`` uses the shipped table.
    site : str or None
        The site name stored on every study (``study.site``); ``None`` stores each study's InstitutionName.
        Set it where one node serves one site whose modalities spell their institution differently.
    connect_timeout_s : int
        PostgreSQL: seconds a connection may take to be established before the write fails and is kept for a
        retry (a registry that is down, unreachable or drops packets never holds a study up longer).
    sqlite_busy_timeout_s : float
        SQLite: seconds a write waits for another writer's lock.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ethnic_groups: Path | None = Field(None, description="EthnicGroup mapping table (YAML); default: the shipped one")
    site: str | None = Field(None, min_length=1, max_length=LO_LENGTH, description="default: InstitutionName")
    connect_timeout_s: int = Field(
        DEFAULT_CONNECT_TIMEOUT_S,
        ge=MIN_CONNECT_TIMEOUT_S,
        le=600,
        description="PostgreSQL: seconds to establish a connection before the write is kept for a retry",
    )
    sqlite_busy_timeout_s: float = Field(
        SQLITE_BUSY_TIMEOUT_S, gt=0, le=600, description="SQLite: seconds a write waits for another writer's lock"
    )

    def engine_options(self) -> EngineOptions:
        """The registry engine's timeouts (:func:`fairness_registry.db.get_engine`)."""
        return EngineOptions(connect_timeout_s=self.connect_timeout_s, sqlite_busy_timeout_s=self.sqlite_busy_timeout_s)

    def mapping(self) -> EthnicGroupMapping:
        """The mapping table (read once per process; ``MappingFileError`` when it cannot be read)."""
        return default_mapping(self.ethnic_groups)
