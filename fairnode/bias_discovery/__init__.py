"""Bias discovered without ground truth: the experiment the fairness audit must pass.

Reproduces unsupervised bias discovery (Gaggion et al.): for each scenario a model is trained with a group
under-represented, or a deployment cohort carries a group-specific acquisition shift, or nothing is biased.
A balanced deployment cohort goes through :func:`fairnode.pipeline.analyse` (the node's own analysis), an
audit frame is built from the estimates only (RCA and the Dice predictor, no ground truth) and audited;
the estimated group gaps are then compared with the true ones.

- :mod:`.scenarios`: the scenarios of each task;
- :mod:`.run`: biased models, deployment cohorts, the per-case measurements (cached) and the audit frame;
- :mod:`.evaluate`: the audit of a frame, the gaps and the summary over scenarios.
"""
