"""Training seeds in the DAG: a dry run of `all` on the smoke config (two seeds) plans every
trained method once per seed under per-seed paths, base once, Premier's history and ablation on
the first seed, and one judge per sampled model; a third seed adds exactly one replicate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import snakemake
from tests.test_workflow_e2e import parse_job_counts
from tests.workflow_copy import copy_workflow


@pytest.fixture(scope="module")
def dry_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("seed-dag"))


def dry_run(root: Path, seeds: list[int]) -> tuple[dict[str, int], str]:
    """(rule -> planned job count, the dry run's text) for `all` with ``train.seeds = seeds``."""
    config = yaml.safe_load((root / "config" / "smoke.yaml").read_text())
    config["train"]["seeds"] = seeds
    path = root / "config" / f"_seeds{len(seeds)}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake("-n", "all", "--configfile", str(path), cwd=root)
    return parse_job_counts(proc.stdout), proc.stdout


def outputs(text: str) -> set[str]:
    """Every output path the dry run lists."""
    return {
        p.strip()
        for line in re.findall(r"^\s+output: (.*)$", text, flags=re.M)
        for p in line.split(",")
    }


def test_two_seeds_plan_one_replicate_per_seed(dry_copy: Path) -> None:
    jobs, text = dry_run(dry_copy, [0, 1])
    assert jobs["train_adapter"] == 3 * 2  # dpo, pipe, ppd x 2 seeds
    assert jobs["sample"] == 3 * 2
    assert jobs["sample_base"] == 1  # the frozen foundation, once
    assert jobs["train_premier"] == 2 + 1  # premier x 2 + the ablation's first seed
    assert jobs["premier_init"] == 2 + 1
    assert jobs["premier_new_users"] == jobs["sample_premier"] == 2
    assert jobs["judge"] == 1 + 4 * 2  # base + (dpo, pipe, ppd, premier) x 2
    assert jobs["premier_history"] == jobs["premier_ablation"] == 1
    assert jobs["evaluate"] == jobs["budgets"] == jobs["bundle"] == 1
    assert jobs["foundation"] == jobs["encode"] == jobs["fit_lambda"] == 1
    out = outputs(text)
    run = "results/smoke"
    for seed in (0, 1):
        for method in ("dpo", "pipe", "ppd"):
            assert f"{run}/adapters/{method}/seed{seed}/final.json" in out
            assert f"{run}/samples/{method}/seed{seed}/index.parquet" in out
            assert f"{run}/scores/{method}/seed{seed}.parquet" in out
        assert f"{run}/adapters/premier_stage2/seed{seed}/final.json" in out
        assert f"{run}/samples/premier/seed{seed}/index.parquet" in out
        assert f"{run}/scores/premier/seed{seed}.parquet" in out
    assert f"{run}/adapters/premier_no_dispersion/seed0/final.json" in out
    assert f"{run}/adapters/premier_no_dispersion/seed1/final.json" not in out
    assert {
        f"{run}/samples/base/index.parquet",
        f"{run}/scores/base.parquet",
        f"{run}/tables/win_rates_per_seed.csv",
        f"{run}/tables/budgets.csv",
    } <= out
    assert not any("/seed2" in p for p in out)


def test_a_third_seed_adds_one_replicate_of_each_trained_method(dry_copy: Path) -> None:
    two, _ = dry_run(dry_copy, [0, 1])
    three, _ = dry_run(dry_copy, [0, 1, 2])
    grows = {
        "train_adapter": 3,
        "sample": 3,
        "train_premier": 1,
        "premier_init": 1,
        "premier_new_users": 1,
        "sample_premier": 1,
        "judge": 4,
    }
    for rule, extra in grows.items():
        assert three[rule] == two[rule] + extra, rule
    same = set(two) - set(grows)
    assert {rule: three[rule] for rule in same} == {rule: two[rule] for rule in same}
