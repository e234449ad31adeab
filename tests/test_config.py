"""The config is validated against the schema before any job runs, with errors naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from prefgen.core.config import (
    ConfigError,
    DuplicateKeyError,
    check_cross_keys,
    check_unique_keys,
    cross_key_errors,
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
    path.write_text("seed: 0\ntrain:\n  lr: 0.1\n  steps: 2\n  lr: 0.2\nlists:\n  - {a: 1, a: 2}\n")
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


SAMPLE_GLOB = "tests/data/pickapic_sample/*.parquet"


def smoke() -> dict:
    return load_config(REPO / "config" / "smoke.yaml")


def pickapic(cfg: dict, path: str | None = SAMPLE_GLOB) -> dict:
    """``cfg`` on the real-data source, with smoke's truth-based keys set for real data."""
    cfg["data"] |= {"source": "pickapic", "path": path}
    cfg["judge"]["core"]["judges"] = ["pipe", "population"]
    cfg["evaluate"] |= {"reference_judge": "pipe", "select_by": "pipe"}
    cfg["evaluate"]["grid"] |= {"types_from": "lambda", "annotate": "pipe"}
    cfg["premier"]["history"]["prompts"] = 0
    return cfg


def set_key(cfg: dict, dotted: str, value: object) -> dict:
    *parents, last = dotted.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[last] = value
    return cfg


# (key changed on smoke.yaml, its value, the message), smoke: 120 users, user_fraction 0.15,
# held_out prompts 30 / min_pairs 4, lpp n_ref 8, ppd n_shots 4
CONTRADICTIONS = [
    ("eval_set.prompts", 31, "eval_set.prompts=31 > split.held_out.prompts=30"),
    (
        "eval_set.unseen_users",
        19,
        "eval_set.unseen_users=19 > the at most 18 held-out users of "
        "split.held_out.user_fraction=0.15 x world.n_users=120",
    ),
    (
        "eval_set.seen_users",
        103,
        "eval_set.seen_users=103 > the at most 102 users not held out "
        "(world.n_users=120, split.held_out.user_fraction=0.15)",
    ),
    (
        "split.held_out.user_fraction",
        0,
        "eval_set.unseen_users=4 but split.held_out.user_fraction=0: no user is held out",
    ),
    ("split.lpp.min_liked", 8, "split.lpp.min_liked=8 <= split.lpp.n_ref=8"),
    ("ppd.embedding.n_shots", 5, "ppd.embedding.n_shots=5 > split.held_out.min_pairs=4"),
    (
        "split.held_out.support_pairs",
        5,
        "split.held_out.support_pairs=5 > split.held_out.min_pairs=4",
    ),
]


@pytest.mark.parametrize(
    ("key", "value", "message"), CONTRADICTIONS, ids=[c[0] for c in CONTRADICTIONS]
)
def test_contradicting_keys_are_both_named(key: str, value: object, message: str) -> None:
    cfg = set_key(smoke(), key, value)
    errors = cross_key_errors(cfg)
    if key == "ppd.embedding.n_shots":  # more shots than the support set too
        assert errors[1:] == [
            f"ppd.embedding.n_shots={value} > split.held_out.support_pairs=4: "
            "PPD draws an unseen user's shots from the support set, the only "
            "pairs of theirs any method sees; lower n_shots or raise "
            "support_pairs"
        ], errors
        errors = errors[:1]
    assert len(errors) == 1 and errors[0].startswith(message), errors
    with pytest.raises(ConfigError, match=rf"^smoke\.yaml: {re.escape(message)}"):
        check_cross_keys(cfg, source="smoke.yaml")


def test_shipped_configs_have_no_contradictions() -> None:
    assert cross_key_errors(smoke()) == []
    assert cross_key_errors(load_config(REPO / "config" / "config.yaml")) == []
    paper = load_config(REPO / "config" / "paper.yaml", {"data": {"path": SAMPLE_GLOB}})
    assert cross_key_errors(paper, root=REPO) == []


@pytest.mark.parametrize(
    "path",
    [
        SAMPLE_GLOB,
        "tests/data/pickapic_sample",
        "tests/data/pickapic_sample/train-00000-of-00002.parquet",
    ],
)
def test_pickapic_path_as_glob_folder_or_file_is_found(path: str) -> None:
    assert cross_key_errors(pickapic(smoke(), path), root=REPO) == []


def test_pickapic_without_shards_is_refused(tmp_path: Path) -> None:
    assert cross_key_errors(pickapic(smoke(), None), root=tmp_path) == [
        "data.source=pickapic but data.path is null: set it to the directory, file or glob of "
        "your Pick-a-Pic v2 parquet shards"
    ]
    assert cross_key_errors(pickapic(smoke(), "shards/*.parquet"), root=tmp_path) == [
        f"data.source=pickapic but data.path='shards/*.parquet' matches no parquet file "
        f"(looked in {tmp_path.resolve()})"
    ]
    (tmp_path / "shards").mkdir()
    assert cross_key_errors(pickapic(smoke(), "shards"), root=tmp_path) != []
    (tmp_path / "shards" / "train-0.parquet").write_bytes(b"")
    assert cross_key_errors(pickapic(smoke(), "shards"), root=tmp_path) == []
    assert cross_key_errors(pickapic(smoke(), "shards/*.parquet"), root=tmp_path) == []
    # without the path check (a shipped config's placeholder), the rest is still checked
    assert cross_key_errors(pickapic(smoke(), None), check_paths=False) == []


def test_pickapic_refuses_every_key_that_needs_the_truth() -> None:
    cfg = smoke()  # synthetic-world settings: oracle judge, planted types
    cfg["data"] |= {"source": "pickapic", "path": SAMPLE_GLOB}
    errors = cross_key_errors(cfg, root=REPO)
    truth = "needs the synthetic world's truth, which data.source=pickapic does not have: "
    assert errors == [
        f"judge.core.judges {truth}drop oracle",
        f"evaluate.reference_judge {truth}use pipe or null",
        f"evaluate.grid.types_from {truth}use lambda",
        f"evaluate.grid.annotate {truth}use pipe or null",
        f"premier.history.prompts {truth}set 0 (its sampled prompts are scored by the oracle)",
    ]
    assert cross_key_errors(
        set_key(pickapic(smoke()), "evaluate.select_by", "oracle"), root=REPO
    ) == [f"evaluate.select_by {truth}use pipe"]


def test_snakemake_refuses_contradicting_keys_before_any_job(tmp_path: Path) -> None:
    bad = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    bad["eval_set"]["prompts"] = 31
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    proc = snakemake("-n", "all", "--configfile", str(path), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"config from {path}" in out
    assert "eval_set.prompts=31 > split.held_out.prompts=30" in out
    assert "Building DAG of jobs" not in out


def test_check_command_reports_a_missing_shard_path(tmp_path: Path) -> None:
    from prefgen.core.config import main

    cfg = pickapic(
        yaml.safe_load((REPO / "config" / "smoke.yaml").read_text()),
        str(tmp_path / "none" / "*.parquet"),
    )
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit, match=r"real\.yaml: data\.source=pickapic but data\.path="):
        main(["check", str(path)])


@pytest.mark.parametrize("scale", ["config.yaml", "smoke.yaml"])
def test_pickapic_overlay_over_a_scale_config_is_a_valid_real_data_config(scale: str) -> None:
    """config/overlays/pickapic.yaml after a synthetic scale config: schema-valid, every key
    that needs the truth switched, and only data.path left for the user to set."""
    overlay = REPO / "config" / "overlays" / "pickapic.yaml"
    check_unique_keys([overlay])
    cfg = load_config(REPO / "config" / scale, overrides=yaml.safe_load(overlay.read_text()))
    assert cfg["data"]["source"] == "pickapic" and cfg["run_name"] == "pickapic"
    assert cross_key_errors(cfg, root=REPO) == [
        "data.source=pickapic but data.path is null: set it to the directory, file or glob of "
        "your Pick-a-Pic v2 parquet shards"
    ]
    cfg["data"]["path"] = SAMPLE_GLOB
    assert cross_key_errors(cfg, root=REPO) == []
