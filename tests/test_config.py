"""The config is validated against the schema before any job runs, with errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefgen.core.config import ConfigError, load_config, validate

from tests.conftest import REPO, snakemake

CONFIGS = sorted((REPO / "config").glob("*.yaml"))


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
