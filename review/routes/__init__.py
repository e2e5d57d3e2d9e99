"""The app's routers, one module per area: ``auth`` (sign-in), ``worklist`` (radiologists), ``governance``
(audits), ``ops`` (status, health, metrics, dead letters), ``api`` (the JSON API); ``cases`` (the case
viewer) is included when present."""
