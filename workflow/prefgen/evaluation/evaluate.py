"""``prefgen evaluate``: from per-image judge scores to the paper's tables and figures.

Writes (PIPE Table 1 and Figs. 2-3):

- ``tables/checkpoint_metrics.*``: every judge's mean score per method and checkpoint;
- ``tables/best_checkpoints.*``: the checkpoint each method and training seed is compared at
  (picked by ``evaluate.select_by``, the PIPE judge, as in the paper), the oracle's score there
  and the step the oracle itself would have picked;
- ``tables/win_rates.*``: seed-paired win rates for every configured method pair, judge and user
  group: the mean over training seeds (``train.seeds``) of the per-seed win rate, a three-way
  (training seeds x users x prompts) bootstrap CI and a verdict (shown / not shown / reversed);
- ``tables/win_rates_per_seed.*``: the same comparisons per training-seed replicate, with
  two-way (users x prompts) CIs, so the spread between seeds is visible;
- ``tables/judge_agreement.*``: each judge's agreement with the reference judge (the oracle) on
  the same comparisons;
- ``tables/scores_by_user_type.*``: every judge's mean score per method at its selected
  checkpoint, by the users' dominant (planted, else learned) type;
- ``figures/checkpoint_curves.png`` and ``figures/samples_user_type{k}.png`` (one grid per user
  type: the seen test user with the largest weight on it; rows = methods, columns = prompts).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import pandas as pd

from prefgen.core.config import ConfigError
from prefgen.core.io import write_table
from prefgen.core.logging import get_logger
from prefgen.evaluation import figures
from prefgen.evaluation.agreement import judge_agreement
from prefgen.evaluation.win_rates import (
    INDEX_COLUMNS,
    SEED,
    checkpoint_metrics,
    first_seed,
    scores_by_user_type,
    select_checkpoints,
    shown_seeds,
    win_rate_tables,
)

log = get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scores",
        nargs="+",
        required=True,
        help="scores/base.parquet and scores/{method}/seed{seed}.parquet files",
    )
    parser.add_argument(
        "--external",
        nargs="*",
        default=[],
        help="the same under scores/external/ (paper-scale judges)",
    )
    parser.add_argument("--run-dir", required=True, help="results/<run_name>/ (sample paths)")
    parser.add_argument("--truth", default=None, help="data/truth/ (planted user types)")
    parser.add_argument(
        "--lambdas",
        default=None,
        help="user_model/lambda.parquet (learned types, when there is no truth)",
    )
    parser.add_argument("--tables", required=True, help="output directory for tables")
    parser.add_argument("--figures", required=True, help="output directory for figures")


def load_scores(core: list[str], external: list[str], judges: list[str]) -> pd.DataFrame:
    """All methods' and training seeds' scores in one frame; external judge columns joined row
    for row."""
    frames = {}
    for path in core:
        df = pd.read_parquet(path)
        method = (str(df["method"].iloc[0]), int(df[SEED].iloc[0]))
        if method in frames:
            raise ValueError(f"{path}: method '{method[0]}' training seed {method[1]} given twice")
        frames[method] = (path, df)
    for path in external:
        ext = pd.read_parquet(path)
        method = (str(ext["method"].iloc[0]), int(ext[SEED].iloc[0]))
        if method not in frames:
            raise ValueError(
                f"{path}: external scores for method '{method[0]}' training seed "
                f"{method[1]} without core scores"
            )
        core_path, df = frames[method]
        extra = [c for c in ext.columns if c not in INDEX_COLUMNS]
        merged = df.merge(ext[INDEX_COLUMNS + extra], on=INDEX_COLUMNS, how="outer", indicator=True)
        if (merged["_merge"] != "both").any():
            raise ValueError(
                f"{path} and {core_path} do not cover the same samples "
                f"({int((merged['_merge'] != 'both').sum())} rows differ)"
            )
        frames[method] = (core_path, merged.drop(columns="_merge"))
    scores = pd.concat([df for _, df in frames.values()], ignore_index=True)
    missing = [j for j in judges if j not in scores.columns]
    if missing:
        raise ValueError(f"judge column(s) {missing} missing from the scores files {core}")
    incomplete = scores[judges].isna().any(axis=1)
    if incomplete.any():
        raise ValueError(
            f"{int(incomplete.sum())} sample(s) lack a score for some judge, e.g. "
            f"{scores.loc[incomplete, INDEX_COLUMNS[:8]].iloc[0].to_dict()}"
        )
    return scores


def stand_in_note(scale: str) -> str:
    if scale == "paper":
        return ""
    return (
        f"Scale '{scale}': stand-in models trained on the synthetic world; 'oracle' is the "
        "users' true reward."
    )


def run(args: argparse.Namespace) -> None:
    p: dict[str, Any] = args.params["evaluate"]
    judges: list[str] = list(args.params["judges"])
    scale = str(args.params["scale"])
    seed = int(args.params["seed"])
    note = stand_in_note(scale)
    t0 = time.time()
    pairs = [tuple(pair) for pair in p["pairs"]]
    reference = p.get("reference_judge")
    if reference is not None and reference not in judges:
        raise ConfigError(f"evaluate.reference_judge='{reference}' is not a scored judge {judges}")
    scores = load_scores(args.scores, args.external, judges)
    types = grid_types(args, p["grid"], int(args.params["grid_types"]))  # fail before any work
    tables, figs = Path(args.tables), Path(args.figures)

    metrics = checkpoint_metrics(scores, judges)
    write_table(
        shown_seeds(metrics),
        tables / "checkpoint_metrics",
        caption=" ".join(
            filter(
                None,
                [
                    "Mean judge score per method, training seed (blank: base, untrained) and "
                    "checkpoint.",
                    note,
                ],
            )
        ),
    )
    selected = select_checkpoints(metrics, p["select_by"], reference)
    write_table(
        shown_seeds(selected),
        tables / "best_checkpoints",
        caption=" ".join(
            filter(
                None,
                [
                    f"Checkpoint compared per method and training seed: best mean "
                    f"'{p['select_by']}' score (PIPE §3.3); the reference judge's ({reference}) "
                    "score there and its own best step beside it.",
                    note,
                ],
            )
        ),
    )
    log.info(
        "selected checkpoints: %s",
        {f"{r.method}/{getattr(r, SEED)}": int(r.step) for r in selected.itertuples()},
    )

    n_boot, conf, tol = int(p["bootstrap"]), float(p["confidence"]), float(p["tie_tolerance"])
    wins, per_seed = win_rate_tables(scores, pairs, judges, selected, n_boot, conf, tol, seed)
    write_table(
        wins,
        tables / "win_rates",
        caption=" ".join(
            filter(
                None,
                [
                    "Seed-paired win rate of method over opponent (ties count half): the mean "
                    f"over the n_seeds training seeds of each seed's win rate, {conf:.0%} CI by "
                    f"three-way bootstrap over training seeds, users and prompts ({n_boot} draws; "
                    "the seeds' spread widened for their small number, "
                    "docs/decisions/33-evaluate-three-way-bootstrap.md), at each "
                    f"seed's checkpoint selected by '{p['select_by']}' (method_steps, one per "
                    "seed). verdict: 'shown' when the CI excludes 0.5 in the method's favour, "
                    "'reversed' when it excludes 0.5 against it, else 'not shown'. Trained methods "
                    "pair seed i with seed i; base (untrained) pairs with every seed.",
                    note,
                ],
            )
        ),
    )
    write_table(
        shown_seeds(per_seed, ["method_seed", "opponent_seed"]),
        tables / "win_rates_per_seed",
        caption=" ".join(
            filter(
                None,
                [
                    "The win rates of tables/win_rates per training-seed replicate (blank seed: "
                    f"base, untrained), {conf:.0%} CI by two-way bootstrap over users and "
                    "prompts: it sees no training variance, so the spread between seeds is the "
                    "thing to read here.",
                    note,
                ],
            )
        ),
    )
    if reference is not None:
        agree = judge_agreement(scores, pairs, judges, reference, selected, n_boot, conf, tol, seed)
        caption = (
            f"Agreement of each judge with '{reference}' on the win-rate comparisons "
            "(reference ties excluded, judge ties count half)."
        )
    else:
        agree = pd.DataFrame(
            columns=["judge", "reference", "users", "n", "agreement", "ci_low", "ci_high"]
        )
        caption = "No reference judge configured (evaluate.reference_judge is null)."
    write_table(agree, tables / "judge_agreement", caption=" ".join(filter(None, [caption, note])))

    weights, names, source = types
    by_type = scores_by_user_type(scores, selected, judges, weights, names)
    write_table(
        by_type,
        tables / "scores_by_user_type",
        caption=" ".join(
            filter(
                None,
                [
                    "Mean judge score (± sem) per method at its selected checkpoints (one per "
                    f"training seed, pooled over the n_seeds seeds), by each user's dominant "
                    f"{source} (largest weight).",
                    note,
                ],
            )
        ),
    )
    first_note = " ".join(filter(None, ["First training seed of each method.", note]))
    figures.checkpoint_curves(
        first_seed(metrics),
        first_seed(selected),
        judges,
        figs / "checkpoint_curves.png",
        subtitle=first_note,
    )
    write_sample_grids(first_seed(scores), first_seed(selected), args, p["grid"], types, first_note)
    log.info("evaluate done in %.1fs: %d win-rate rows", time.time() - t0, len(wins))


def grid_types(
    args: argparse.Namespace, grid: dict[str, Any], expected: int
) -> tuple[pd.DataFrame, list[str], str]:
    """User-type weights for the grids, checked against the number of grids the rule declares."""
    truth_users, names = None, None
    if grid["types_from"] == "truth":
        if not args.truth:
            raise ConfigError("evaluate.grid.types_from='truth' needs --truth (synthetic world)")
        from prefgen.data.truth import load_truth

        truth = load_truth(args.truth)
        truth_users, names = truth.users.reset_index(), truth.type_names
    lambdas = pd.read_parquet(args.lambdas) if args.lambdas else None
    weights, names, source = figures.user_types(truth_users, names, lambdas)
    if len(names) != expected:
        raise ValueError(
            f"{len(names)} user types found ({source}) but the rule declares "
            f"{expected} sample grids"
        )
    return weights, names, source


def write_sample_grids(
    scores: pd.DataFrame,
    selected: pd.DataFrame,
    args: argparse.Namespace,
    grid: dict[str, Any],
    types: tuple[pd.DataFrame, list[str], str],
    note: str,
) -> None:
    """One grid per user type, for the seen test user with the largest weight on that type."""
    weights, names, source = types
    seen = scores.loc[scores["user_group"] == "seen", "user_id"].unique()
    annotate = grid.get("annotate")
    for k, name in enumerate(names):
        user, dominant = figures.pick_grid_user(weights, seen, k)
        w = float(weights.loc[user, k])
        how = "dominant" if dominant else "largest weight among seen test users; not dominant"
        title = f"Seen test user {user}: {source} '{name}' (weight {w:.2f}, {how})" + (
            f"\n{note}" if note else ""
        )
        figures.sample_grid(
            scores,
            selected,
            Path(args.run_dir),
            user,
            int(grid["prompts"]),
            annotate,
            title,
            Path(args.figures) / f"samples_user_type{k}.png",
        )
