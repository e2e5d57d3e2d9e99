"""The EthnicGroup mapping table: free-text values (DICOM header, EHR export) -> the audit's groups.

The table is a YAML file (format and matching rules in the shipped ``ethnic_groups.yaml``, the default);
a site replaces it with its own through ``RegistrySettings.ethnic_groups``. Texts the table leaves
unmapped become ``"unknown"``, and ``fairnode registry unmapped`` lists them so the table can be extended.

Nothing here logs a value (it describes a patient).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from pathlib import Path

import yaml

__all__ = [
    "DEFAULT_MAPPING_PATH",
    "UNKNOWN_GROUP",
    "EthnicGroupMapping",
    "MappingFileError",
    "MatchKind",
    "default_mapping",
    "normalise_text",
]

#: The mapping table shipped with the package.
DEFAULT_MAPPING_PATH = Path(__file__).resolve().parent / "ethnic_groups.yaml"
#: The group of a text meaning "not recorded", or that the table does not map.
UNKNOWN_GROUP = "unknown"
#: Longest group name (the ``ethnic_group`` columns are VARCHAR(16)).
MAX_GROUP_LENGTH = 16

_NON_WORD_RE = re.compile(r"[^0-9a-z]+")


class MappingFileError(ValueError):
    """A mapping table that cannot be read or breaks the format; the message names the file and the problem."""


class MatchKind(StrEnum):
    """How a text was mapped."""

    GROUP = "group"  # one group's synonyms matched
    MIXED = "mixed"  # several groups' synonyms matched: the mixed group
    UNKNOWN_TERM = "unknown-term"  # a text meaning "not recorded"
    UNMAPPED = "unmapped"  # nothing matched


def normalise_text(value: object) -> str:
    """Lower-case text with every run of characters other than letters and digits turned into one space.

    ``None`` and bytes that are not ASCII give ``""``.
    """
    if value is None:
        return ""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return ""
    return _NON_WORD_RE.sub(" ", str(value).lower()).strip()


@dataclass(frozen=True)
class EthnicGroupMapping:
    """A mapping table, checked: group -> synonyms (normalised), the mixed group, the "not recorded" terms.

    Build it with :meth:`from_yaml` (or :func:`default_mapping`); the constructor checks the same rules.

    Attributes
    ----------
    groups : mapping of str to tuple of str
        Audit group -> its synonyms, normalised with :func:`normalise_text`.
    mixed : str or None
        The group of a text whose synonyms name several groups; ``None`` makes such a text ``unknown``.
    unknown_terms : frozenset of str
        Normalised texts meaning "not recorded".
    source : str
        Where the table came from (a path), for messages.
    """

    groups: Mapping[str, tuple[str, ...]]
    mixed: str | None = None
    unknown_terms: frozenset[str] = frozenset({""})
    source: str = "<memory>"
    _patterns: tuple[tuple[re.Pattern[str], str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        owner: dict[str, str] = {}
        for group, synonyms in self.groups.items():
            if not isinstance(group, str) or not group.strip() or len(group) > MAX_GROUP_LENGTH:
                raise MappingFileError(
                    f"{self.source}: group name {group!r} must be non-empty text of at most {MAX_GROUP_LENGTH} "
                    "characters"
                )
            if group.lower() == UNKNOWN_GROUP:
                raise MappingFileError(f"{self.source}: 'unknown' is not a group; list such texts under 'unknown'")
            for synonym in synonyms:
                if not synonym:
                    raise MappingFileError(f"{self.source}: group {group!r} has an empty synonym")
                if synonym in owner and owner[synonym] != group:
                    raise MappingFileError(
                        f"{self.source}: synonym {synonym!r} is listed under both {owner[synonym]!r} and {group!r}; "
                        "a synonym may belong to one group only"
                    )
                owner[synonym] = group
        if self.mixed is not None and self.mixed not in self.groups:
            raise MappingFileError(
                f"{self.source}: mixed group {self.mixed!r} is not one of the groups ({', '.join(self.groups)})"
            )
        longest_first = sorted(owner.items(), key=lambda item: -len(item[0]))
        patterns = tuple(
            (re.compile(rf"\b(?:(non|not)\s+)?{re.escape(term)}\b"), group) for term, group in longest_first
        )
        object.__setattr__(self, "_patterns", patterns)

    @classmethod
    def from_yaml(cls, path: str | Path) -> EthnicGroupMapping:
        """Read a mapping table (format: the comments of the shipped ``ethnic_groups.yaml``).

        Raises
        ------
        MappingFileError
            When the file cannot be read or parsed, or breaks a rule (the message names file and rule).
        """
        source = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise MappingFileError(f"cannot read the ethnic group mapping table {source}: {exc}") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("groups"), dict) or not raw["groups"]:
            raise MappingFileError(
                f"{source}: expected a mapping with 'groups' (group: [synonyms]) and optionally 'mixed' (a group) "
                "and 'unknown' ([texts meaning not recorded])"
            )
        extra = set(raw) - {"groups", "mixed", "unknown"}
        if extra:
            raise MappingFileError(f"{source}: unknown keys {sorted(extra)}; accepted: groups, mixed, unknown")
        groups: dict[str, tuple[str, ...]] = {}
        for group, synonyms in raw["groups"].items():
            if not isinstance(synonyms, list) or not all(isinstance(s, str) for s in synonyms):
                raise MappingFileError(f"{source}: group {group!r} must list its synonyms as text")
            groups[str(group)] = tuple(dict.fromkeys(normalise_text(s) for s in synonyms))
        unknown = raw.get("unknown") or []
        if not isinstance(unknown, list) or not all(isinstance(s, str) for s in unknown):
            raise MappingFileError(f"{source}: 'unknown' must be a list of texts")
        mixed = raw.get("mixed")
        if mixed is not None and not isinstance(mixed, str):
            raise MappingFileError(f"{source}: 'mixed' must be a group name, got {mixed!r}")
        return cls(
            groups=groups,
            mixed=mixed,
            unknown_terms=frozenset({"", *(normalise_text(s) for s in unknown)}),
            source=source,
        )

    def match(self, value: object) -> tuple[str, MatchKind]:
        """The group of a free-text value, and how it was found (rules: the shipped YAML's comments).

        Returns
        -------
        tuple of (str, MatchKind)
            The group (``"unknown"`` for an unknown term or an unmapped text) and the kind of match.
        """
        text = normalise_text(value)
        if text in self.unknown_terms:
            return UNKNOWN_GROUP, MatchKind.UNKNOWN_TERM
        found: set[str] = set()
        for pattern, group in self._patterns:
            for hit in pattern.finditer(text):
                if hit.group(1) is None:
                    found.add(group)
            text = pattern.sub(" ", text)
        if len(found) == 1:
            return found.pop(), MatchKind.GROUP
        if found and self.mixed is not None:
            return self.mixed, MatchKind.MIXED
        return UNKNOWN_GROUP, MatchKind.UNMAPPED

    def group(self, value: object) -> str:
        """The group of a free-text value (``"unknown"`` when not recorded or unmapped)."""
        return self.match(value)[0]


@cache
def _load(path: str) -> EthnicGroupMapping:
    return EthnicGroupMapping.from_yaml(path)


def default_mapping(path: str | Path | None = None) -> EthnicGroupMapping:
    """The mapping table at ``path`` (the shipped one when ``None``), read once per process and path."""
    return _load(str(Path(path).resolve() if path is not None else DEFAULT_MAPPING_PATH))
