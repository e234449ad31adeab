"""tables/budgets: examples seen = steps x batch x accumulation per trained model and a caption
that says whether budgets match; tables/wall_seconds: the wall time read from the rule's
Snakemake benchmark file, in its own table so tables/budgets is the same bytes on every run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from prefgen.cli import main as prefgen_main
from prefgen.evaluation.budgets import (
    BUDGET_COLUMNS,
    WALL_COLUMNS,
    benchmark_seconds,
    budget_row,
)

#: the header Snakemake writes to a `benchmark:` file, and one measured row
BENCHMARK = (
    "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    "{s}\t0:01:23\t900.1\t2000.2\t850.0\t860.0\t0.1\t3.2\t95.0\t80.5\n"
)


def dpo_final(steps: int = 300, batch: int = 32, accum: int = 2) -> dict:
    return {
        "method": "pipe",
        "method_config": {"conditioning": "ip_adapter"},
        "complete": True,
        "steps": steps,
        "pairs_per_step": batch * accum,
        "trainable_parameters": 12345,
    }


def premier_final() -> dict:
    return {
        "method": "premier",
        "method_config": {"conditioning": "premier"},
        "complete": True,
        "steps": 120,
        "pairs_per_step": 32,
        "trainable_parameters": 5000,
        "stage2": {
            "steps": 30,
            "batch_size": 16,
            "fits": [{"step": 60}, {"step": 120}],
            "trainable_parameters": 8 * 400,
        },
    }


def test_examples_seen_is_steps_times_batch_times_accumulation() -> None:
    row = budget_row("pipe", 2, "train", dpo_final(300, 32, 2))
    assert row["examples_per_step"] == 64 and row["optimizer_steps"] == 300
    assert row["examples_seen"] == 300 * 32 * 2
    assert row["example"] == "preference pair" and row["trainable_parameters"] == 12345
    assert row["train_seed"] == 2 and "wall_seconds" not in row
    premier = budget_row("premier", 0, "train", premier_final())
    assert premier["example"] == "liked image" and premier["examples_seen"] == 120 * 32
    # stage 2: one fit of 30 steps x 16 liked images per sampled checkpoint (two here)
    stage2 = budget_row("premier", 0, "new_users", premier_final())
    assert stage2["optimizer_steps"] == 60 and stage2["examples_seen"] == 60 * 16
    assert stage2["trainable_parameters"] == 3200


def test_unfinished_training_or_unknown_stage_is_an_error() -> None:
    with pytest.raises(ValueError, match="did not complete"):
        budget_row("pipe", 0, "train", dpo_final() | {"complete": False})
    with pytest.raises(ValueError, match="unknown stage"):
        budget_row("pipe", 0, "finetune", dpo_final())


def test_benchmark_seconds_reads_the_s_column(tmp_path: Path) -> None:
    path = tmp_path / "bench.tsv"
    path.write_text(BENCHMARK.format(s="83.0412"))
    assert benchmark_seconds(path) == pytest.approx(83.0412)
    path.write_text("max_rss\n1.0\n")
    with pytest.raises(ValueError, match="not a Snakemake benchmark file"):
        benchmark_seconds(path)


def test_budgets_cli_writes_the_table_and_states_unequal_budgets(tmp_path: Path) -> None:
    """Two runs measured differently: tables/budgets the same bytes, tables/wall_seconds not."""
    table_bytes = []
    for run, offset in (("a", 10.0), ("b", 20.0)):
        table_bytes.append(budgets_cli(tmp_path / run, offset))
    assert table_bytes[0] == table_bytes[1]


def budgets_cli(tmp_path: Path, offset: float) -> bytes:
    entries = []
    for seed in (0, 1):
        for method, final, stage in [
            ("dpo", dpo_final(300, 32, 1), "train"),
            ("pipe", dpo_final(300, 32, 1), "train"),
            ("premier", premier_final(), "train"),
            ("premier", premier_final(), "new_users"),
        ]:
            folder = tmp_path / method / stage / f"seed{seed}"
            folder.mkdir(parents=True)
            (folder / "final.json").write_text(json.dumps(final))
            (folder / "bench.tsv").write_text(BENCHMARK.format(s=offset + seed))
            entries += [
                "--entry",
                method,
                str(seed),
                stage,
                str(folder / "final.json"),
                str(folder / "bench.tsv"),
            ]
    out = tmp_path / "tables" / "budgets.csv"
    wall = tmp_path / "tables" / "wall_seconds.csv"
    args = ["budgets", "--params", "{}", *entries, "--out", str(out), "--wall-seconds", str(wall)]
    assert prefgen_main(args) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == BUDGET_COLUMNS
    assert len(table) == 8
    main = table[table["stage"] == "train"].set_index(["method", "train_seed"])
    assert main.loc[("dpo", 0), "examples_seen"] == main.loc[("pipe", 1), "examples_seen"] == 9600
    assert main.loc[("premier", 1), "examples_seen"] == 3840
    seconds = pd.read_csv(wall)
    assert list(seconds.columns) == WALL_COLUMNS
    keys = ["method", "train_seed", "stage"]
    assert seconds[keys].equals(table[keys])
    measured = seconds.set_index(["method", "train_seed", "stage"])["wall_seconds"]
    assert measured[("dpo", 1, "train")] == offset + 1
    md = out.with_suffix(".md").read_text()
    assert "Not every method sees the same number of training examples: premier 3,840 (40%)" in md
    assert "tables/wall_seconds" in md
    assert out.with_suffix(".tex").exists() and wall.with_suffix(".md").exists()
    return b"".join(out.with_suffix(s).read_bytes() for s in (".csv", ".md", ".tex"))
