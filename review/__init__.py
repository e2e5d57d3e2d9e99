"""review: the node's web app for radiologists, governance and operations (FastAPI, Jinja2 templates).

Modules
-------
- :mod:`review.app`: :func:`~review.app.create_app` (the factory), :func:`~review.app.build_context`,
  :func:`~review.app.ensure_first_admin`, :func:`~review.app.serve` (uvicorn in a thread beside the node).
- :mod:`review.config`: :class:`~review.config.ReviewSettings` (``Settings.review``) and the session secret.
- :mod:`review.deps`: the injected :class:`~review.deps.ReviewContext`, ``SessionDep``, ``CurrentUser``,
  :func:`~review.deps.require_role`, ``PUBLIC``, ``CaseId``, the templates, the CSRF check.
- :mod:`review.security`: argon2 passwords, API tokens, signed session cookies, CSRF tokens, sign-in limits.
- :mod:`review.worklist`, :mod:`review.audits`, :mod:`review.metrics`: what the pages show.
- :mod:`review.routes`: ``auth`` (``/login``, ``/logout``), ``worklist`` (``/worklist``), ``governance``
  (``/governance/audits...``), ``ops`` (``/``, ``/health``, ``/ready``, ``/metrics``, ``/ops...``), ``api``
  (``/api/...``), and ``cases`` (the case viewer) when present.

Roles: ``radiologist`` (worklist, cases), ``governance`` (audits: aggregates only), ``admin`` (operations,
audits, the trail). Users are managed with ``fairnode users``.
"""
