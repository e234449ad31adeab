"""The whole DAG on config/smoke.yaml, end to end, plus incremental-rerun planning.

One session-scoped run feeds every test here: the run itself is the expensive part (a few
minutes on 2 cores), the checks on it are cheap.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import snakemake

pytestmark = pytest.mark.e2e


def planned_jobs(root: Path, config: dict) -> dict[str, int]:
    """Rule -> job count Snakemake would run for ``config`` (a dry run, nothing executed)."""
    path = root / "config" / "_planned.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake("-n", "all", "--configfile", str(path), cwd=root)
    return parse_job_counts(proc.stdout)


def parse_job_counts(dry_run_stdout: str) -> dict[str, int]:
    """The `Job stats` table of a Snakemake dry run, as rule -> count (empty: nothing to do)."""
    counts: dict[str, int] = {}
    in_table = False
    for line in dry_run_stdout.splitlines():
        if line.startswith("job") and "count" in line:
            in_table = True
            continue
        if in_table:
            match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
            if match and match.group(1) != "total":
                counts[match.group(1)] = int(match.group(2))
            elif line.strip().startswith("total"):
                break
    return counts


def smoke_config(root: Path) -> dict:
    return yaml.safe_load((root / "config" / "smoke.yaml").read_text())


def test_smoke_run_writes_the_contract_tables(smoke_run: Path) -> None:
    run = smoke_run / "results" / "smoke"
    acc = pd.read_csv(run / "tables" / "preference_accuracy.csv")
    assert list(acc.columns) == ["method", "split", "n_users", "n_pairs", "accuracy",
                                 "ci_low", "ci_high"]
    wins = pd.read_csv(run / "tables" / "win_rates.csv")
    assert {"method", "opponent", "judge", "users", "n", "win_rate", "tie_rate",
            "ci_low", "ci_high"} <= set(wins.columns)
    assert {"pipe", "dpo"} <= set(wins["method"])


def test_smoke_user_model_ordering(smoke_run: Path) -> None:
    """On the smoke world PIPE beats the population model and the oracle bounds both."""
    acc = pd.read_csv(smoke_run / "results" / "smoke" / "tables" / "preference_accuracy.csv")
    by = acc.set_index("method")["accuracy"]
    assert by["oracle"] >= by["pipe"] - 0.02
    assert by["pipe"] > by["population"] + 0.02


def test_bundle_matches_manifest(smoke_run: Path) -> None:
    from prefgen.evaluation.bundle import verify_manifest

    run = smoke_run / "results" / "smoke"
    manifest = json.loads((run / "MANIFEST.json").read_text())
    assert manifest["files"], "manifest lists no files"
    assert verify_manifest(run) == []


def test_nothing_changed_plans_nothing(smoke_run: Path) -> None:
    assert planned_jobs(smoke_run, smoke_config(smoke_run)) == {}


def test_split_key_reruns_split_and_dependants_not_world(smoke_run: Path) -> None:
    config = smoke_config(smoke_run)
    config["split"]["pipe"]["test_fraction"] = 0.2
    planned = planned_jobs(smoke_run, config)
    assert "split_pipe" in planned
    assert "world" not in planned and "ingest" not in planned
    assert "fit_lambda" in planned


def test_evaluation_key_reruns_only_evaluation(smoke_run: Path) -> None:
    config = smoke_config(smoke_run)
    config["evaluate"]["bootstrap"] = int(config["evaluate"]["bootstrap"]) + 1
    planned = planned_jobs(smoke_run, config)
    assert "evaluate" in planned and "bundle" in planned
    assert not {"train_adapter", "sample", "world", "fit_pasta"} & set(planned)


def test_ceiling_key_reruns_the_ceiling_not_the_user_model(smoke_run: Path) -> None:
    """The diagnostic's settings are kept out of preference_accuracy's params on purpose."""
    config = smoke_config(smoke_run)
    config["preference_accuracy"]["ceiling"]["epochs"] += 1
    planned = planned_jobs(smoke_run, config)
    assert "user_model_ceiling" in planned
    assert not {"preference_accuracy", "user_model_recovery", "fit_lambda", "fit_pasta",
                "train_adapter"} & set(planned), planned


def test_report_builds_from_the_finished_run(smoke_run: Path) -> None:
    """`make run`'s last step: Snakemake's HTML report with every table's caption."""
    report = smoke_run / "report.html"
    snakemake("--cores", "1", "--report", str(report), "all", "--configfile",
              "config/smoke.yaml", cwd=smoke_run)
    html = report.read_text(errors="replace")
    assert "win_rates.csv" in html and "preference_accuracy.csv" in html
