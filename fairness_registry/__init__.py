"""fairness_registry: the pseudonymised database of what the node did, for fairness audits.

Modules
-------
- :mod:`fairness_registry.models`: sqlmodel tables (``Subject``, ``Study``, ``Series``, ``Case``,
  ``CaseStructure``), the ``ReviewState`` enum and the public read models (``StudyPublic``, ``CasePublic``,
  ``WorklistItem``).
- :mod:`fairness_registry.db`: one engine per URL (SQLite default, PostgreSQL at scale) and
  :func:`~fairness_registry.db.migrate` (alembic ``upgrade head``, migrations shipped in ``migrations/``).
- :mod:`fairness_registry.pseudonym`: HMAC-SHA256 pseudonyms of patient IDs.
- :mod:`fairness_registry.demographics`: DICOM header values -> normalised demographic categories.
- :mod:`fairness_registry.ethnic_groups`: the configurable EthnicGroup mapping table (shipped
  ``ethnic_groups.yaml``); :mod:`fairness_registry.settings`: ``RegistrySettings`` (table, site name).
- :mod:`fairness_registry.acquisition`: header -> confounders (scanner model, site, slice thickness, pixel
  spacing, kVp, contrast).
- :mod:`fairness_registry.ehr_import`: demographics from an EHR export, pseudonymised, in one transaction.
- :mod:`fairness_registry.crud`: keyword-only functions that record studies (demographics and acquisition
  at study time), series and cases, the quality and route of a case with one row per structure, the true
  Dice of a structure, and serve the radiologists' worklist (review states and their transitions).

No patient name, patient ID, birth date or accession number is ever stored or logged.
"""

# The account tables belong to the registry's metadata wherever the models are used.
from fairness_registry import accounts as accounts
