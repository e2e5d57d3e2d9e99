"""``fairnode model compare``: mitigation strategies side by side on one balanced held-out cohort."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fairnode.cli.common import console, err_console, fail, progress_bar


def model_compare(
    models: Annotated[
        list[str], typer.Argument(help="Models to compare (a group-specific fallback brings its group models).")
    ],
    group: Annotated[
        str, typer.Option(help="Group attribute(s) of the balanced cohort: sex, ethnic_group, ...; a,b = intersection.")
    ] = "sex",
    per_group: Annotated[int, typer.Option(help="Held-out subjects per group (the cohort is balanced).")] = 40,
    baseline: Annotated[
        str | None, typer.Option(help="Reference model (default: the one trained with 'none').")
    ] = None,
    majority: Annotated[
        str | None, typer.Option(help="Majority group (default: the baseline's largest training group).")
    ] = None,
    models_dir: Annotated[Path | None, typer.Option(help="Folder of the models (default: the bundled models).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the comparison here (JSON).")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the grouped-bar plot here (PNG).")] = None,
    work: Annotated[Path, typer.Option(help="Cache of per-case scores (resumable).")] = Path("data/mitigation"),
    bootstrap: Annotated[int, typer.Option(help="Patient-level bootstrap resamples for the CIs.")] = 1000,
) -> None:
    """Dice per structure overall and per group with bootstrap CIs, gap, skewed error ratio, ES-Dice,
    worst-group Dice, the majority group's change, NSD and HD95 of every model on one balanced held-out
    cohort; the winning rule stated and applied."""
    from fairnode.mitigation.compare import WINNING_RULE, compare
    from fairnode.mitigation.measure import balanced_subjects, candidate_from_folder, measure
    from fairnode.mitigation.report import comparison_table, grouped_bar_plot, markdown_table
    from inference.mitigation import MitigationError, parse_groups
    from inference.model_card import MODELS_DIR, ModelCardError, load_card

    try:
        attributes = parse_groups(group)
    except MitigationError as exc:
        fail(str(exc))
    if per_group < 2:
        fail(f"--per-group must be >= 2 (40 or more for the comparison to mean much), got {per_group}")
    if bootstrap < 100:
        fail(f"--bootstrap must be >= 100, got {bootstrap}")
    root = models_dir or MODELS_DIR
    candidates = []
    for name in models:
        folder = root / name
        if not (folder / "card.yaml").is_file():
            fail(f"no model '{name}' in {root}")
        try:
            candidates.append(candidate_from_folder(folder))
        except (ModelCardError, ValueError) as exc:
            fail(str(exc))
    if len({c.name for c in candidates}) != len(candidates):
        fail("a model is named twice")
    strategies = {c.name: c.strategy for c in candidates}
    base = baseline or next((c.name for c in candidates if c.strategy == "none"), candidates[0].name)
    if base not in strategies:
        fail(f"baseline '{base}' is not among the compared models ({', '.join(strategies)})")
    if majority is None:
        mit = load_card(root / base).mitigation
        if mit is not None and mit.training_groups and tuple(mit.group_by) == attributes:
            majority = max(mit.training_groups, key=mit.training_groups.__getitem__)
    kind = load_card(root / base).training.cohort.kind
    try:
        subjects = balanced_subjects(kind, attributes, per_group)
    except ValueError as exc:
        fail(str(exc))
    cache = work / f"compare-{kind}-{'-'.join(attributes)}-{per_group}.jsonl"
    with progress_bar() as progress:
        task = progress.add_task(
            f"{len(subjects)} held-out subjects x {len(candidates)} models", total=len(subjects), info=""
        )
        cases = measure(candidates, subjects, attributes, cache, lambda case: progress.advance(task))
    result = compare(cases, strategies, attributes, baseline=base, majority=majority, bootstrap=bootstrap)
    result["cohort"] = {"kind": kind, "per_group": per_group, "n": len(subjects), "seed": subjects[0].seed}
    console.print(comparison_table(result))
    console.print(f"rule: {WINNING_RULE}")
    console.print(f"winner: {result['winner']['model']} ({result['winner']['strategy']})")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(
            json.dumps(result | {"markdown": markdown_table(result)}, indent=1) + "\n", encoding="utf-8"
        )
        err_console.print(f"wrote {json_out}")
    if plot is not None:
        grouped_bar_plot(result, plot)
        err_console.print(f"wrote {plot}")
