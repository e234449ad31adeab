"""The config is validated against the schema before any job runs, with errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefgen.core.config import (
    ConfigError,
    DuplicateKeyError,
    check_unique_keys,
    duplicate_keys,
    load_config,
    validate,
)

from tests.conftest import REPO, snakemake
from tests.workflow_copy import copy_workflow

CONFIGS = sorted((REPO / "config").glob("*.yaml"))
#: Every YAML the workflow reads: the configs and the cluster profiles.
SHIPPED_YAML = CONFIGS + sorted((REPO / "workflow" / "profiles").rglob("*.yaml"))
PROFILE = REPO / "workflow" / "profiles" / "slurm" / "config.yaml"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    assert load_config(path)["run_name"]


def test_unknown_key_is_named() -> None:
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config["data"]["sauce"] = "synthetic"
    with pytest.raises(ConfigError, match=r"data.*'sauce' was unexpected"):
        validate(config)


def test_wrong_type_is_named() -> None:
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config["seed"] = "zero"
    with pytest.raises(ConfigError, match=r"key 'seed'.*not of type 'integer'"):
        validate(config)


def test_snakemake_rejects_bad_config_before_any_job(tmp_path: Path) -> None:
    bad = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    bad["sed"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    proc = snakemake("-n", "all", "--configfile", str(path), check=False)
    assert proc.returncode != 0
    assert "'sed' was unexpected" in proc.stderr + proc.stdout


def test_config_readme_documents_every_key() -> None:
    """config/README.md is generated from the schema; it must be current."""
    from prefgen.core.config import schema_markdown

    assert (REPO / "config" / "README.md").read_text() == schema_markdown(), (
        "config/README.md is stale: run `python -m prefgen.core.config docs > config/README.md`"
    )


@pytest.mark.parametrize("path", SHIPPED_YAML, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_yaml_defines_no_key_twice(path: Path) -> None:
    assert duplicate_keys(path) == []


def test_duplicate_key_in_config_names_file_key_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("seed: 0\ntrain:\n  lr: 0.1\n  steps: 2\n  lr: 0.2\n"
                    "lists:\n  - {a: 1, a: 2}\n")
    found = duplicate_keys(path)
    assert found == [
        f"{path}: duplicate key 'train.lr' at line 5 (first defined at line 3); YAML would "
        "silently keep the second value: merge the two into one",
        f"{path}: duplicate key 'lists[0].a' at line 7 (first defined at line 7); YAML would "
        "silently keep the second value: merge the two into one",
    ]
    with pytest.raises(DuplicateKeyError, match=r"dup\.yaml: duplicate key 'train\.lr'"):
        load_config(path)


def test_equal_keys_in_different_mappings_are_not_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("a: {lr: 1}\nb: {lr: 1}\n1: x\n'1': y\n")
    check_unique_keys([path])


def test_duplicate_key_in_profile_is_named(tmp_path: Path) -> None:
    lines = PROFILE.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("jobs:")) + 1
    path = tmp_path / "config.yaml"
    path.write_text("\n".join([*lines, "jobs: 5"]) + "\n")
    with pytest.raises(DuplicateKeyError) as err:
        check_unique_keys([REPO / "config" / "smoke.yaml", path])
    assert str(err.value) == (
        f"{path}: duplicate key 'jobs' at line {len(lines) + 1} (first defined at line {first}); "
        "YAML would silently keep the second value: merge the two into one"
    )


def test_snakemake_refuses_duplicate_config_key_before_any_job(tmp_path: Path) -> None:
    smoke = (REPO / "config" / "smoke.yaml").read_text()
    path = tmp_path / "bad.yaml"
    path.write_text(smoke + "seed: 1\n")
    proc = snakemake("-n", "all", "--configfile", str(path), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"{path}: duplicate key 'seed' at line {len(smoke.splitlines()) + 1}" in out
    assert "Building DAG of jobs" not in out


def test_snakemake_refuses_duplicate_profile_key_before_any_job(tmp_path: Path) -> None:
    wf = copy_workflow(tmp_path / "wf")
    profile = wf / "workflow" / "profiles" / "slurm" / "config.yaml"
    profile.write_text(profile.read_text() + "jobs: 5\n")
    proc = snakemake("-n", "all", "--configfile", "config/smoke.yaml", cwd=wf, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "profiles/slurm/config.yaml: duplicate key 'jobs'" in out
    assert "Building DAG of jobs" not in out
