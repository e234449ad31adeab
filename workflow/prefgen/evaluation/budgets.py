"""``prefgen budgets``: what each trained generation method was given, per training seed.

One row per trained model and training stage: trainable parameters, optimizer steps, examples
per step (batch × gradient accumulation) and examples seen = steps × batch × accumulation
(preference pairs for the Diffusion-DPO methods; liked images for Premier, whose stage 1
denoises preferred images and whose stage 2 fits each held-out user's combination weights on
their support likes, once per sampled checkpoint). All of it comes from the trainer's
``final.json``, so two runs of the same config write the same bytes.

The job's wall seconds go to their own table, ``tables/wall_seconds`` (method, training seed,
stage, wall seconds), read from the rule's Snakemake ``benchmark:`` file (its ``s`` column): a
measurement, not a result, and the one table of a run that differs between two runs of the same
config. The manifest declares it measured (``prefgen.evaluation.manifest.MEASURED``), so the
byte-identity promise covers every other table.
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
]
#: tables/wall_seconds: one row per row of tables/budgets, the measured wall time of its job
WALL_COLUMNS = ["method", "train_seed", "stage", "wall_seconds"]
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
    parser.add_argument(
        "--wall-seconds",
        required=True,
        help="tables/wall_seconds.csv (.md, .tex beside): the measured wall time per row",
    )


def benchmark_seconds(path: str | Path) -> float:
    """Wall seconds of a Snakemake benchmark tsv (the ``s`` column; the mean of its repeats)."""
    table = pd.read_csv(path, sep="\t")
    if "s" not in table.columns or table.empty:
        raise ValueError(f"{path}: not a Snakemake benchmark file (no 's' column or no rows)")
    return float(table["s"].mean())


def budget_row(method: str, seed: int, stage: str, final: dict[str, Any]) -> dict[str, Any]:
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
    }


def budgets(entries: list[tuple[str, int, str, dict[str, Any]]]) -> pd.DataFrame:
    rows = [budget_row(*e) for e in entries]
    return pd.DataFrame(rows, columns=BUDGET_COLUMNS)


def wall_seconds(entries: list[tuple[str, int, str, float]]) -> pd.DataFrame:
    """The measured wall seconds of each trained model's job, one row per ``budgets`` row."""
    rows = [
        {"method": m, "train_seed": int(s), "stage": stage, "wall_seconds": round(sec, 1)}
        for m, s, stage, sec in entries
    ]
    return pd.DataFrame(rows, columns=WALL_COLUMNS)


WALL_CAPTION = (
    "Measured wall seconds of each trained model's job (Snakemake benchmark, column s), one row "
    "per row of tables/budgets. A measurement of this run on this machine: it differs between "
    "two runs of the same config, so MANIFEST.json declares this table measured and it is the "
    "one table outside the byte-identity promise (docs/reliability.md)."
)


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
        f"{equal} Each job's measured wall seconds are in tables/wall_seconds (they differ "
        "between runs; this table does not)."
    )


def run(args: argparse.Namespace) -> None:
    table = budgets([(m, int(s), stage, read_json(final)) for m, s, stage, final, _ in args.entry])
    wall = wall_seconds(
        [(m, int(s), stage, benchmark_seconds(bench)) for m, s, stage, _, bench in args.entry]
    )
    write_table(table, Path(args.out).with_suffix(""), caption=caption(table))
    write_table(wall, Path(args.wall_seconds).with_suffix(""), caption=WALL_CAPTION)
    log.info("budgets: %d rows -> %s, wall seconds -> %s", len(table), args.out, args.wall_seconds)
