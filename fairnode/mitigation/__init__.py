"""Comparison of bias-mitigation strategies on one balanced held-out cohort.

- :mod:`.measure`: candidates (a model, or group-specific models with their fallback), the balanced cohort,
  per-case Dice, NSD and HD95 (cached);
- :mod:`.compare`: per-group figures, gap, skewed error ratio and ES-Dice with the audit's definitions, and
  the winning rule;
- :mod:`.report`: the readable table and the grouped-bar plot.
"""
