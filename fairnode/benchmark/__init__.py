"""Benchmark of a model (bundled or imported) on a labelled cohort: true Dice, NSD and HD95 per group and
intersection, the audit's disparity measures and adjusted regression, and where the errors fall.

:mod:`~fairnode.benchmark.measure` scores one case, :mod:`~fairnode.benchmark.compute` turns measured cases into
the JSON result, :mod:`~fairnode.benchmark.plots` and :mod:`~fairnode.benchmark.render` draw and write the
report, :mod:`~fairnode.benchmark.run` is what ``fairnode model benchmark`` calls.
"""
