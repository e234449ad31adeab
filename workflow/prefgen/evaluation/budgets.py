"""``prefgen budgets``: what each trained generation method was given, per training seed.

One row per trained model and training stage: trainable parameters, optimizer steps, examples
per step (batch × gradient accumulation) and examples seen = steps × batch × accumulation
(preference pairs for the Diffusion-DPO methods; liked images for Premier, whose stage 1
denoises preferred images and whose stage 2 fits each held-out user's combination weights on
their support likes, once per sampled checkpoint), and the job's wall seconds. Everything but
the wall time comes from the trainer's ``final.json``; the wall time from the rule's Snakemake
``benchmark:`` file (its ``s`` column), so it is measured, not recomputed, and is the one column
of the run's tables that changes between two runs of the same config.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from prefgen.core.io import read_json, write_table
from prefgen.core.logging import get_logger

log = get_logger(__name__)

BUDGET_COLUMNS = [
    "method",
    "train_seed",
    "stage",
    "example",
    "trainable_parameters",
    "optimizer_steps",
    "examples_per_step",
    "examples_seen",
    "wall_seconds",
]
#: what one training example is, per (method kind, stage)
PAIRS, LIKED = "preference pair", "liked image"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--entry",
        nargs=5,
        action="append",
        required=True,
        metavar=("METHOD", "SEED", "STAGE", "FINAL_JSON", "BENCHMARK_TSV"),
        help="one trained model: method, training seed, stage (train | "
        "new_users), its final.json and its rule's benchmark tsv",
    )
    parser.add_argument("--out", required=True, help="tables/budgets.csv (.md, .tex beside)")


def benchmark_seconds(path: str | Path) -> float:
    """Wall seconds of a Snakemake benchmark tsv (the ``s`` column; the mean of its repeats)."""
    table = pd.read_csv(path, sep="\t")
    if "s" not in table.columns or table.empty:
        raise ValueError(f"{path}: not a Snakemake benchmark file (no 's' column or no rows)")
    return float(table["s"].mean())


def budget_row(
    method: str, seed: int, stage: str, final: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """One row of the table from a trainer's (or Premier stage 2's) ``final.json``."""
    if stage == "train":
        if not final.get("complete", False):
            raise ValueError(f"{method} seed {seed}: training did not complete")
        steps = int(final["steps"])
        per_step = int(final["pairs_per_step"])
        params = int(final["trainable_parameters"])
        example = LIKED if final["method_config"].get("conditioning") == "premier" else PAIRS
    elif stage == "new_users":
        s2 = final["stage2"]
        steps = int(s2["steps"]) * len(s2["fits"])
        per_step = int(s2["batch_size"])
        params = int(s2["trainable_parameters"])
        example = LIKED
    else:
        raise ValueError(f"unknown stage '{stage}' (train | new_users)")
    return {
        "method": method,
        "train_seed": int(seed),
        "stage": stage,
        "example": example,
        "trainable_parameters": params,
        "optimizer_steps": steps,
        "examples_per_step": per_step,
        "examples_seen": steps * per_step,
        "wall_seconds": round(seconds, 1),
    }


def budgets(entries: list[tuple[str, int, str, dict[str, Any], float]]) -> pd.DataFrame:
    rows = [budget_row(*e) for e in entries]
    return pd.DataFrame(rows, columns=BUDGET_COLUMNS)


def caption(table: pd.DataFrame) -> str:
    """States whether the methods' main training saw equal numbers of examples, and which not."""
    main = table[table["stage"] == "train"].groupby("method", sort=False)["examples_seen"].mean()
    most = float(main.max())
    unequal = {m: v for m, v in main.items() if v != most}
    if unequal:
        parts = ", ".join(f"{m} {v:,.0f} ({v / most:.0%})" for m, v in unequal.items())
        equal = (
            f"Not every method sees the same number of training examples: {parts} of the "
            f"largest budget, {most:,.0f}; the report caption and "
            "docs/decisions/21-train-mini-budgets.md say why."
        )
    else:
        equal = f"Every method's training sees the same number of examples ({most:,.0f})."
    return (
        "Training budget per trained method and seed: trainable parameters, optimizer "
        "steps, examples per step (batch × gradient accumulation) and examples seen = "
        "steps × batch × accumulation (preference pairs for the DPO methods, liked images "
        "for Premier; its stage 2 fits the held-out users once per sampled checkpoint). "
        f"{equal} wall_seconds is the job's measured wall time (Snakemake benchmark) and "
        "differs between runs."
    )


def run(args: argparse.Namespace) -> None:
    entries = [
        (m, int(s), stage, read_json(final), benchmark_seconds(bench))
        for m, s, stage, final, bench in args.entry
    ]
    table = budgets(entries)
    write_table(table, Path(args.out).with_suffix(""), caption=caption(table))
    log.info("budgets: %d rows -> %s", len(table), args.out)
