"""fairness_registry."""
