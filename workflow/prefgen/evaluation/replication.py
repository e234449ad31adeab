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
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", help="run folder (results/<run>) or a win_rates.csv")
    parser.add_argument("run_b", help="the other run folder or win_rates.csv")
    parser.add_argument(
        "--users",
        default=None,
        help="compare one user group only (all, seen or unseen); default every group",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the row table as CSV")


def run(args: argparse.Namespace) -> None:
    a, b = read_win_rates(args.run_a), read_win_rates(args.run_b)
    if args.users is not None:
        a, b = a[a["users"] == args.users], b[b["users"] == args.users]
        if a.empty:
            raise ValueError(f"no comparisons for users '{args.users}' in {args.run_a}")
    compared = compare_verdicts(a, b)
    if args.out is not None:
        from prefgen.core.io import atomic_path

        with atomic_path(args.out) as tmp:
            compared.to_csv(tmp, index=False)
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
