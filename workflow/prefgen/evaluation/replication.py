"""``prefgen compare-verdicts``: do two runs of the study draw the same conclusions?

A reader's command (no ``--params``). A reviewer who re-runs the study on another machine, or
with other training seeds, compares the two bundles' ``tables/win_rates.csv`` row by row
(method, opponent, judge, user group). Each row's verdicts fall in one of three classes:

- ``same``: both runs say ``shown``, both ``reversed`` or both ``not shown``;
- ``boundary``: one run says ``not shown`` and the other ``shown`` or ``reversed``. This is what
  a 95% interval allows when the win rate sits near the interval's edge: the two runs' intervals
  overlap and neither contradicts the other;
- ``contradiction``: one run says ``shown`` and the other ``reversed``. Two valid intervals
  should almost never do this, so the command exits with status 1 when any row does.

Rows that only one run has (another method list, judge set or user groups) are an error naming
them: verdicts of different studies are not comparable.

``prefgen compare-verdicts RUN --seed-halves N`` asks the same of one run with 2k training seeds
(or more): it splits the seeds into two disjoint halves of k, N ways, recomputes the win-rate
table on each half exactly as the ``evaluate`` rule does (per-seed checkpoints, the three-way
bootstrap, the run's own settings from ``MANIFEST.json``) and reports how many verdicts the two
halves share. It tells a reader, before anyone re-runs the study, how often each comparison's
verdict would move with another draw of k seeds (docs/decisions/51-evaluate-verdict-replication.md).
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from prefgen.core.io import atomic_path, read_json

#: the columns that name one comparison in ``win_rates.csv``
ROW_KEYS = ["method", "opponent", "judge", "users"]
#: the columns read from each run
COMPARED = ["n_seeds", "n", "win_rate", "ci_low", "ci_high", "verdict"]
VERDICTS = {"shown", "not shown", "reversed"}
AGREEMENTS = ("same", "boundary", "contradiction")


def win_rates_path(run: str | Path) -> Path:
    """``run`` itself when it is a file, else the run folder's ``tables/win_rates.csv``."""
    path = Path(run)
    found = path if path.is_file() else path / "tables" / "win_rates.csv"
    if not found.is_file():
        raise FileNotFoundError(
            f"{run}: expected a run folder with tables/win_rates.csv or a win_rates.csv file"
        )
    return found


def read_win_rates(run: str | Path) -> pd.DataFrame:
    """The run's win-rate table, checked for the columns and verdicts compared here."""
    path = win_rates_path(run)
    table = pd.read_csv(path)
    missing = [c for c in ROW_KEYS + COMPARED if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (expected the evaluate rule's table)")
    unknown = sorted(set(table["verdict"]) - VERDICTS)
    if unknown:
        raise ValueError(f"{path}: unknown verdicts {unknown}; expected one of {sorted(VERDICTS)}")
    duplicated = table.duplicated(ROW_KEYS)
    if duplicated.any():
        row = table.loc[duplicated, ROW_KEYS].iloc[0].to_dict()
        raise ValueError(f"{path}: comparison {row} appears more than once")
    return table


def agreement(a: str, b: str) -> str:
    """``same``, ``boundary`` (one run claims nothing) or ``contradiction`` (opposite claims)."""
    if a == b:
        return "same"
    if "not shown" in (a, b):
        return "boundary"
    return "contradiction"


def margin(low: pd.Series, high: pd.Series, null: float = 0.5) -> pd.Series:
    """Distance from ``null`` to the interval's nearer end: positive when the interval excludes
    ``null`` (a verdict is claimed), negative by as much as it would have to move to exclude it."""
    above, below = low - null, null - high
    inside = -np.minimum(null - low, high - null)
    return pd.Series(np.where(above > 0, above, np.where(below > 0, below, inside)), low.index)


def compare_verdicts(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """One row per comparison: both runs' estimates, intervals and verdicts, and their agreement.

    ``margin_a`` / ``margin_b`` is how far each run's interval stays from 0.5 on the side that
    decides its verdict (negative when the interval contains 0.5): a boundary row has a small
    margin in at least one run.
    """
    merged = a[ROW_KEYS + COMPARED].merge(
        b[ROW_KEYS + COMPARED], on=ROW_KEYS, how="outer", suffixes=("_a", "_b"), indicator="side"
    )
    lonely = merged[merged["side"] != "both"]
    if not lonely.empty:
        rows = [
            f"{r.method} vs {r.opponent} / {r.judge} / {r.users} (only in run "
            f"{'a' if r.side == 'left_only' else 'b'})"
            for r in lonely.itertuples()
        ]
        raise ValueError(
            f"{len(rows)} comparisons are in one run only, so the runs are different studies: "
            + "; ".join(rows[:5])
            + (" ..." if len(rows) > 5 else "")
        )
    merged = merged.drop(columns="side")
    for side in ("a", "b"):
        merged[f"margin_{side}"] = margin(merged[f"ci_low_{side}"], merged[f"ci_high_{side}"])
    merged["agreement"] = [
        agreement(x, y) for x, y in zip(merged["verdict_a"], merged["verdict_b"], strict=True)
    ]
    return merged.sort_values(ROW_KEYS, kind="stable").reset_index(drop=True)


def summary(compared: pd.DataFrame) -> str:
    """Counts per user group, e.g. ``all: 30 same, 6 boundary, 0 contradiction (of 36)``."""
    lines = []
    for users, part in compared.groupby("users", sort=False):
        counts = part["agreement"].value_counts()
        parts = ", ".join(f"{int(counts.get(k, 0))} {k}" for k in AGREEMENTS)
        lines.append(f"{users}: {parts} (of {len(part)})")
    return "\n".join(lines)


def seed_splits(seeds: list[int], n_splits: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Up to ``n_splits`` distinct ways of cutting ``seeds`` into two disjoint halves of
    len(seeds) // 2 (an odd one out sits in neither), drawn reproducibly from all of them."""
    seeds = sorted(seeds)
    half = len(seeds) // 2
    if half < 2:
        raise ValueError(
            f"seed halves need at least 4 training seeds (two per half); the run has {seeds}"
        )
    splits = []
    for a in itertools.combinations(seeds, half):
        left = [s for s in seeds if s not in a]
        # each unordered pair once: the half holding the smaller seed is half a
        splits += [(list(a), list(b)) for b in itertools.combinations(left, half) if a[0] < b[0]]
    random.Random(seed).shuffle(splits)
    return splits[:n_splits]


def seed_halves(run_dir: str | Path, n_splits: int) -> pd.DataFrame:
    """``compare_verdicts`` of the two halves, for each split (``split`` column: half a's seeds).

    The win-rate tables are the ``evaluate`` rule's, recomputed from the run's score files on a
    subset of seeds; the untrained base model is in both halves.
    """
    from prefgen.evaluation.evaluate import load_scores
    from prefgen.evaluation.win_rates import (
        SEED,
        UNTRAINED,
        checkpoint_metrics,
        select_checkpoints,
        win_rate_tables,
    )

    run_dir = Path(run_dir)
    manifest = run_dir / "MANIFEST.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: expected a finished run folder (the bundle rule)")
    config = read_json(manifest)["config"]
    p = config["evaluate"]
    judges = sorted(read_win_rates(run_dir)["judge"].unique())
    core = sorted(
        str(f) for f in (run_dir / "scores").glob("**/*.parquet") if "external" not in f.parts
    )
    external = sorted(str(f) for f in (run_dir / "scores" / "external").glob("**/*.parquet"))
    scores = load_scores(core, external, judges)
    selected = select_checkpoints(
        checkpoint_metrics(scores, judges), p["select_by"], p.get("reference_judge")
    )
    seeds = sorted(int(s) for s in scores[SEED].unique() if s != UNTRAINED)
    pairs = [tuple(pair) for pair in p["pairs"]]

    def table(half: list[int]) -> pd.DataFrame:
        keep = [*half, UNTRAINED]
        chosen = selected[selected[SEED].fillna(UNTRAINED).astype(int).isin(keep)]
        wins, _ = win_rate_tables(
            scores[scores[SEED].isin(keep)],
            pairs,
            judges,
            chosen,
            int(p["bootstrap"]),
            float(p["confidence"]),
            float(p["tie_tolerance"]),
            int(config["seed"]),
        )
        return wins

    frames = []
    for a, b in seed_splits(seeds, n_splits, int(config["seed"])):
        compared = compare_verdicts(table(a), table(b))
        frames.append(compared.assign(split=" ".join(map(str, a)), other=" ".join(map(str, b))))
    return pd.concat(frames, ignore_index=True)


def halves_summary(halves: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Per user group, the verdicts shared per split; and per comparison the share of splits in
    which the halves' verdicts differ (``moved``), its mean win rate over all halves and the
    share of halves that say ``shown`` (``shown_in``) and ``reversed`` (``reversed_in``)."""
    lines = []
    for users, part in halves.groupby("users", sort=False):
        same = part.groupby("split")["agreement"].apply(lambda a: int((a == "same").sum()))
        rows = len(part) // part["split"].nunique()
        contradictions = int((part["agreement"] == "contradiction").sum())
        lines.append(
            f"{users}: {same.mean():.1f} of {rows} verdicts the same per split (min {same.min()},"
            f" max {same.max()}; all {rows} in {int((same == rows).sum())} of {len(same)} "
            f"splits); {contradictions} contradictions"
        )
    both = pd.concat(
        [
            halves[ROW_KEYS + ["agreement", f"win_rate_{h}", f"verdict_{h}"]].rename(
                columns={f"win_rate_{h}": "win_rate", f"verdict_{h}": "verdict"}
            )
            for h in ("a", "b")
        ]
    )
    moved = (
        both.assign(moved=both["agreement"] != "same")
        .groupby(ROW_KEYS, sort=False)
        .agg(
            moved=("moved", "mean"),
            mean_win_rate=("win_rate", "mean"),
            shown_in=("verdict", lambda v: (v == "shown").mean()),
            reversed_in=("verdict", lambda v: (v == "reversed").mean()),
        )
        .reset_index()
    )
    return "\n".join(lines), moved


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", help="run folder (results/<run>) or a win_rates.csv")
    parser.add_argument(
        "run_b", nargs="?", default=None, help="the other run folder or win_rates.csv"
    )
    parser.add_argument(
        "--seed-halves",
        type=int,
        default=None,
        metavar="N",
        help="instead of a second run: N splits of run_a's training seeds into two halves",
    )
    parser.add_argument(
        "--users",
        default=None,
        help="compare one user group only (all, seen or unseen); default every group",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the row table as CSV")


def run(args: argparse.Namespace) -> None:
    if (args.run_b is None) == (args.seed_halves is None):
        raise ValueError("give either a second run or --seed-halves N, not both or neither")
    if args.seed_halves is not None:
        halves = seed_halves(args.run_a, args.seed_halves)
        if args.users is not None:
            halves = halves[halves["users"] == args.users]
        if args.out is not None:
            write_csv(halves, args.out)
        text, moved = halves_summary(halves)
        print(moved.round(3).to_markdown(index=False))
        print()
        print(text)
        return
    a, b = read_win_rates(args.run_a), read_win_rates(args.run_b)
    if args.users is not None:
        a, b = a[a["users"] == args.users], b[b["users"] == args.users]
        if a.empty:
            raise ValueError(f"no comparisons for users '{args.users}' in {args.run_a}")
    compared = compare_verdicts(a, b)
    if args.out is not None:
        write_csv(compared, args.out)
    differ = compared[compared["agreement"] != "same"]
    cols = ROW_KEYS + ["win_rate_a", "verdict_a", "win_rate_b", "verdict_b", "agreement"]
    if not differ.empty:
        print(differ[cols].round(3).to_markdown(index=False))
        print()
    print(summary(compared))
    if (compared["agreement"] == "contradiction").any():
        print(
            "contradiction: a comparison is shown in one run and reversed in the other",
            file=sys.stderr,
        )
        raise SystemExit(1)


def write_csv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
