"""Incremental reruns of the data stages: a changed `split.pipe` key replans
`split_pipe` and its dependants but never `world` or `ingest`; an unchanged config plans nothing.

Runs only the data targets of the smoke config in a copy of the workflow (about a minute), so it
checks Snakemake's params-based invalidation without the cost of the whole DAG.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import snakemake
from tests.test_workflow_e2e import parse_job_counts

DATA_TARGETS = [
    "results/smoke/splits/pipe/stats.json",
    "results/smoke/splits/ppd/stats.json",
    "results/smoke/splits/lpp/stats.json",
    "results/smoke/splits/eval_set.parquet",
]


@pytest.fixture(scope="module")
def data_run(workdir_copy: Path) -> Path:
    snakemake(
        *DATA_TARGETS,
        "--cores",
        "2",
        "--configfile",
        "config/smoke.yaml",
        cwd=workdir_copy,
        timeout=1200,
    )
    return workdir_copy


def plan(root: Path, config: dict) -> dict[str, int]:
    path = root / "config" / "_incremental.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake("-n", *DATA_TARGETS, "--configfile", str(path), cwd=root)
    return parse_job_counts(proc.stdout)


def test_unchanged_config_plans_nothing(data_run: Path) -> None:
    config = yaml.safe_load((data_run / "config" / "smoke.yaml").read_text())
    assert plan(data_run, config) == {}


def test_split_pipe_key_replans_split_pipe_not_world(data_run: Path) -> None:
    config = yaml.safe_load((data_run / "config" / "smoke.yaml").read_text())
    config["split"]["pipe"]["test_fraction"] = 0.2
    planned = plan(data_run, config)
    assert "split_pipe" in planned
    assert not {"world", "ingest", "split_ppd"} & set(planned)
    # split_lpp writes the LPP table's user-model train set from PIPE train
    assert "split_lpp" in planned
