"""tables/budgets: examples seen = steps x batch x accumulation per trained model, the wall time
read from the rule's Snakemake benchmark file, and a caption that says whether budgets match."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from prefgen.cli import main as prefgen_main
from prefgen.evaluation.budgets import BUDGET_COLUMNS, benchmark_seconds, budget_row

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
    row = budget_row("pipe", 2, "train", dpo_final(300, 32, 2), 83.04)
    assert row["examples_per_step"] == 64 and row["optimizer_steps"] == 300
    assert row["examples_seen"] == 300 * 32 * 2
    assert row["example"] == "preference pair" and row["trainable_parameters"] == 12345
    assert row["train_seed"] == 2 and row["wall_seconds"] == 83.0
    premier = budget_row("premier", 0, "train", premier_final(), 10.0)
    assert premier["example"] == "liked image" and premier["examples_seen"] == 120 * 32
    # stage 2: one fit of 30 steps x 16 liked images per sampled checkpoint (two here)
    stage2 = budget_row("premier", 0, "new_users", premier_final(), 5.0)
    assert stage2["optimizer_steps"] == 60 and stage2["examples_seen"] == 60 * 16
    assert stage2["trainable_parameters"] == 3200


def test_unfinished_training_or_unknown_stage_is_an_error() -> None:
    with pytest.raises(ValueError, match="did not complete"):
        budget_row("pipe", 0, "train", dpo_final() | {"complete": False}, 1.0)
    with pytest.raises(ValueError, match="unknown stage"):
        budget_row("pipe", 0, "finetune", dpo_final(), 1.0)


def test_benchmark_seconds_reads_the_s_column(tmp_path: Path) -> None:
    path = tmp_path / "bench.tsv"
    path.write_text(BENCHMARK.format(s="83.0412"))
    assert benchmark_seconds(path) == pytest.approx(83.0412)
    path.write_text("max_rss\n1.0\n")
    with pytest.raises(ValueError, match="not a Snakemake benchmark file"):
        benchmark_seconds(path)


def test_budgets_cli_writes_the_table_and_states_unequal_budgets(tmp_path: Path) -> None:
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
            (folder / "bench.tsv").write_text(BENCHMARK.format(s=10.0 + seed))
            entries += [
                "--entry",
                method,
                str(seed),
                stage,
                str(folder / "final.json"),
                str(folder / "bench.tsv"),
            ]
    out = tmp_path / "tables" / "budgets.csv"
    assert prefgen_main(["budgets", "--params", "{}", *entries, "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == BUDGET_COLUMNS
    assert len(table) == 8
    main = table[table["stage"] == "train"].set_index(["method", "train_seed"])
    assert main.loc[("dpo", 0), "examples_seen"] == main.loc[("pipe", 1), "examples_seen"] == 9600
    assert main.loc[("premier", 1), "examples_seen"] == 3840
    assert main.loc[("dpo", 1), "wall_seconds"] == 11.0
    md = out.with_suffix(".md").read_text()
    assert "Not every method sees the same number of training examples: premier 3,840 (40%)" in md
    assert out.with_suffix(".tex").exists()
