"""config/paper.yaml is a valid experiment and plans the whole paper DAG offline.

Acceptance: `snakemake -n all --configfile config/paper.yaml` on the committed
real-schema Pick-a-Pic sample plans every rule family in under 15 s, with the papers' models,
and GPU stages carry a GPU request in the plan while CPU stages do not.
"""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from prefgen.core.config import load_config
from prefgen.data.pickapic import check_shard
from prefgen.data.pickapic_schema import PICKAPIC_V2_SCHEMA

from tests.conftest import REPO, snakemake

PAPER = REPO / "config" / "paper.yaml"
SAMPLE = REPO / "tests" / "data" / "pickapic_sample"
SAMPLE_GLOB = "tests/data/pickapic_sample/*.parquet"
#: Rules that must not be planned at paper scale: the synthetic world (real data instead) and
#: the stand-in foundation (SDXL is loaded with from_pretrained), and the recovery of planted
#: truth, which real data does not have; and the stand-in VLM's instruction tuning (the 7B
#: checkpoint is loaded with from_pretrained).
ABSENT_AT_PAPER = {
    "world",
    "foundation",
    "user_model_recovery",
    "user_model_ceiling",
    "vlm_pretrain",
}
#: GPU stages; each planned job of these must request a GPU.
GPU_RULES = {
    "encode",
    "features",
    "vlm_embeddings",
    "train_adapter",
    "sample",
    "judge_external",
    "train_premier",
    "sample_premier",
}
#: Stages that must stay on CPU nodes.
CPU_RULES = {"ingest", "split_pipe", "split_ppd", "split_lpp", "eval_set", "evaluate", "bundle"}


def declared_rules() -> set[str]:
    """Every rule the workflow's rules files declare (the DAG must plan all but the absent)."""
    names: set[str] = set()
    for path in (REPO / "workflow" / "rules").glob("*.smk"):
        names |= set(re.findall(r"^rule (\w+):", path.read_text(), flags=re.M))
    return names


def planned_jobs(out: str) -> list[tuple[str, str]]:
    """(rule, resources line) of every job in `snakemake -n` output."""
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", out):
        rule = re.search(r"^(?:local)?rule (\w+):", block, flags=re.M)
        if rule:
            res = re.search(r"^\s+resources: (.*)$", block, flags=re.M)
            jobs.append((rule.group(1), res.group(1) if res else ""))
    return jobs


def test_paper_config_validates_with_paper_models() -> None:
    cfg = load_config(PAPER)
    assert (cfg["run_name"], cfg["scale"], cfg["data"]["source"]) == ("paper", "paper", "pickapic")
    assert cfg["foundation"]["pretrained"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert cfg["vlm"]["model"] == "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    # the papers' stated values (PPD §5, PIPE §3.2/§3.3, LPP §4.1)
    assert cfg["train"]["lr"] == 1e-5
    assert cfg["train"]["batch_size"] * cfg["train"]["gradient_accumulation_steps"] == 768
    assert cfg["split"]["held_out"]["prompts"] == 500
    assert cfg["split"]["pipe"]["test_fraction"] == 0.1
    assert cfg["ppd"]["embedding"]["n_shots"] == 4
    assert cfg["split"]["lpp"]["n_ref"] == 8 and cfg["split"]["lpp"]["min_liked"] == 11
    assert "oracle" not in cfg["judge"]["core"]["judges"]  # no true reward on real data


def test_paper_config_inherits_nothing_from_the_mini_config() -> None:
    """The Snakefile loads config/config.yaml first and `--configfile` only overlays it, so a
    section missing from paper.yaml would silently run with mini values (stand-in models).
    Every schema section except the synthetic world must therefore be spelt out."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    paper = yaml.safe_load(PAPER.read_text())
    missing = set(schema["properties"]) - {"world"} - set(paper)
    assert not missing, f"paper.yaml would inherit mini values for {sorted(missing)}"


def test_every_paper_value_is_sourced() -> None:
    """Each value line of paper.yaml has a comment on it or just above it (source or choice)."""
    lines = PAPER.read_text().splitlines()
    unsourced = []
    for i, line in enumerate(lines):
        if not re.match(r"^\s+\w+:\s*\S", line) or "#" in line:
            continue
        above = [x for x in lines[max(0, i - 6) : i] if x.strip()]
        if not any("#" in x for x in above):
            unsourced.append(f"line {i + 1}: {line.strip()}")
    assert not unsourced, unsourced


def test_sample_is_real_pickapic_v2_schema() -> None:
    shards = sorted(SAMPLE.glob("*.parquet"))
    assert len(shards) >= 2
    rows = 0
    for path in shards:
        check_shard(path)  # the reader's own schema check
        table = pq.read_table(path)
        assert table.schema.equals(PICKAPIC_V2_SCHEMA), path
        rows += table.num_rows
        for blob in table.column("jpg_0").to_pylist()[:5] + table.column("jpg_1").to_pylist()[:5]:
            with Image.open(io.BytesIO(blob)) as im:
                assert im.format == "JPEG"
    assert 200 <= rows <= 1000
    assert sum(p.stat().st_size for p in SAMPLE.iterdir()) < 1_000_000


def test_paper_dag_plans_every_rule_family() -> None:
    proc = snakemake(
        "-n",
        "all",
        "--configfile",
        str(PAPER),
        "--config",
        f"data={{path: {SAMPLE_GLOB}}}",
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    jobs = planned_jobs(out)
    planned = {rule for rule, _ in jobs}
    assert not planned & ABSENT_AT_PAPER, planned & ABSENT_AT_PAPER
    missing = declared_rules() - ABSENT_AT_PAPER - planned
    assert not missing, f"rules not planned at paper scale: {sorted(missing)}"
    for rule, resources in jobs:
        if rule in GPU_RULES:
            assert re.search(r"\bgpu=[1-9]", resources), f"{rule} has no GPU request: {resources}"
        if rule in CPU_RULES:
            assert "gpu" not in resources, f"{rule} asks for a GPU: {resources}"


@pytest.mark.parametrize("name", ["core.yaml", "vlm.yaml"])
def test_conda_envs_install_prefgen_without_relative_pip_path(name: str) -> None:
    """`-e ../` resolves against snakemake's conda prefix, not the repo: the envs must not use it;
    a post-deploy script installs the package from the workflow's own source instead."""
    env = REPO / "envs" / name
    assert "-e ../" not in env.read_text()
    script = env.with_suffix(".post-deploy.sh")
    assert script.exists() and "pip install" in script.read_text()


@pytest.mark.parametrize("name", ["core", "vlm"])
def test_post_deploy_installs_the_repo_it_runs_in(name: str, tmp_path: Path) -> None:
    """Run the script as snakemake does (inside the env, from the working directory), with a
    recording `python`: from a folder below the repo it installs the repo root, editable and
    without dependencies; outside any prefgen checkout it fails with a message."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "args"
    fake = bindir / "python"
    fake.write_text(f'#!/bin/sh\necho "$@" > {record}\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin"}
    script = REPO / "envs" / f"{name}.post-deploy.sh"
    ok = subprocess.run(
        ["bash", str(script)], cwd=REPO / "tests" / "data", env=env, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert record.read_text().split() == ["-m", "pip", "install", "--no-deps", "-e", str(REPO)]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    bad = subprocess.run(
        ["bash", str(script)], cwd=outside, env=env, capture_output=True, text=True
    )
    assert bad.returncode != 0 and "no prefgen pyproject.toml" in bad.stderr
