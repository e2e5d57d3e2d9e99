"""The quarterly fairness audit: registry rows in, a report a governance committee can sign out.

- :mod:`~fairness_registry.audit.data` reads the audit input frame from the registry (:func:`load_frame`).
- :mod:`~fairness_registry.audit.compute` turns a frame into a JSON-ready result (:func:`compute_audit`),
  without any database, so experiments can build the same frame and call it.
- :mod:`~fairness_registry.audit.plots` and :mod:`~fairness_registry.audit.render` draw and write the
  report (HTML, PDF, JSON).

Settings are :class:`AuditSettings`; errors a user can act on are :class:`AuditError`.
"""

from __future__ import annotations

from fairness_registry.audit.settings import AuditError, AuditSettings

__all__ = ["AuditError", "AuditSettings"]
