"""The README's one command for one's own Pick-a-Pic shards runs the whole DAG.

`snakemake --cores 2 all --configfile <scale> config/overlays/pickapic.yaml --config
'data={path: ...}'`, exactly as the README shows it, with `config/smoke.yaml` as the scale and
`tests/data/pickapic_tiny.yaml` after the overlay to fit the committed 320-pair sample in
minutes. Real data has no truth: the `world` rule must not run, no oracle judge scores, and the
truth-only tables are not made; every other final table is written and the bundle verifies.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from prefgen.evaluation.manifest import verify_manifest

from tests.conftest import REPO, snakemake
from tests.workflow_copy import copy_workflow

SAMPLE = "tests/data/pickapic_sample"


@pytest.mark.slow
@pytest.mark.e2e
def test_readme_command_runs_the_study_on_pickapic_shards(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    assert "--configfile config/config.yaml config/overlays/pickapic.yaml" in readme
    assert "--config 'data={path: \"my_shards/*.parquet\"}'" in readme
    work = copy_workflow(tmp_path / "wf")
    shutil.copytree(REPO / SAMPLE, work / SAMPLE)
    shutil.copy2(REPO / "tests" / "data" / "pickapic_tiny.yaml", work / "tests" / "data")
    args = [
        "--cores",
        "2",
        "all",
        "--configfile",
        "config/smoke.yaml",
        "config/overlays/pickapic.yaml",
        "tests/data/pickapic_tiny.yaml",
        "--config",
        f'data={{path: "{SAMPLE}/*.parquet"}}',
    ]
    proc = snakemake(*args, cwd=work, timeout=1500)
    log = proc.stdout + proc.stderr
    assert "rule world:" not in log and "localrule world:" not in log
    run = work / "results" / "pickapic_tiny"
    assert not (run / "data" / "world").exists() and not (run / "data" / "truth").exists()
    stats = pd.read_json(run / "data" / "clean" / "stats.json", typ="series")
    assert stats["rows_read"] == 320
    tables = {p.name for p in (run / "tables").glob("*.csv")}
    assert {
        "win_rates.csv",
        "win_rates_per_seed.csv",
        "best_checkpoints.csv",
        "judge_agreement.csv",
        "preference_accuracy.csv",
        "preference_prediction_topk.csv",
        "contamination.csv",
        "budgets.csv",
        "wall_seconds.csv",
    } <= tables
    assert not {"user_model_recovery.csv", "user_model_ceiling.csv"} & tables
    wins = pd.read_csv(run / "tables" / "win_rates.csv")
    assert "oracle" not in set(wins["judge"]) and {"pipe", "population"} <= set(wins["judge"])
    agreement = pd.read_csv(run / "tables" / "judge_agreement.csv")
    assert set(agreement["reference"]) == {"pipe"}
    assert verify_manifest(run) == []
    # nothing left to do: the same command again plans no job
    again = snakemake(*args, "-n", cwd=work)
    assert "Nothing to be done" in again.stdout + again.stderr
