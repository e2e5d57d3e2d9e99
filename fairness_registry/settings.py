"""Registry settings: the ethnic group mapping table and the site name stored with each study.

Part of the node's settings as ``Settings.registry_options`` (YAML key ``registry_options``, environment
``FAIRNODE_REGISTRY_OPTIONS__<FIELD>``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

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
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ethnic_groups: Path | None = Field(None, description="EthnicGroup mapping table (YAML); default: the shipped one")
    site: str | None = Field(None, min_length=1, max_length=LO_LENGTH, description="default: InstitutionName")

    def mapping(self) -> EthnicGroupMapping:
        """The mapping table (read once per process; ``MappingFileError`` when it cannot be read)."""
        return default_mapping(self.ethnic_groups)
