"""The artifact bundle: MANIFEST.json hashes every bundled file, `verify_manifest` catches any
change, exclusions are recorded, and the generated README describes every file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefgen.cli import main as prefgen_main
from prefgen.core.config import load_config
from prefgen.evaluation.bundle import DESCRIPTIONS, describe, verify_manifest
from prefgen.evaluation.manifest import git_info, sha256_file

EXCLUDE = ["data/world/*", "data/clean/*", "cache/*"]


def make_run(root: Path) -> Path:
    run = root / "results" / "smoke"
    files = {
        "tables/win_rates.csv": "method,opponent,judge,users,n,win_rate,tie_rate,ci_low,ci_high,"
        "verdict,n_seeds\n"
        "pipe,base,oracle,all,120,0.7,0.0,0.6,0.8,shown,3\n"
        "pipe,dpo,oracle,all,120,0.55,0.0,0.45,0.65,not shown,3\n"
        "pipe,base,oracle,seen,90,0.72,0.0,0.6,0.84,shown,3\n",
        "tables/win_rates.md": "| a |\n",
        "figures/checkpoint_curves.png": "png",
        "samples/pipe/index.parquet": "idx",
        "user_model/lambda.parquet": "lam",
        "adapters/pipe/checkpoint-10/adapter.safetensors": "w" * 100,
        "data/truth/world.json": "{}",
        "data/world/shard-00000.parquet": "big input",
        "cache/encoded/train.safetensors": "cache",
        ".hidden.tmp": "temp",
        "samples/pipe/.snakemake_timestamp": "",
    }
    files.update({f"samples/pipe/step-10/u{i}.png": f"img{i}" for i in range(12)})
    for rel, text in files.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(text)
    return run


def bundle(run: Path, config: dict) -> int:
    return prefgen_main(
        [
            "bundle",
            "--params",
            json.dumps({"config": config}),
            "--run-dir",
            str(run),
            "--readme",
            str(run / "README.md"),
            "--manifest",
            str(run / "MANIFEST.json"),
        ]
    )


@pytest.fixture()
def config(repo: Path) -> dict:
    return load_config(repo / "config" / "smoke.yaml")


def test_manifest_hashes_bundle_and_records_exclusions(tmp_path: Path, config: dict) -> None:
    run = make_run(tmp_path)
    assert bundle(run, config) == 0
    manifest = json.loads((run / "MANIFEST.json").read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    assert "README.md" in listed and "tables/win_rates.csv" in listed
    assert "adapters/pipe/checkpoint-10/adapter.safetensors" in listed
    assert "data/truth/world.json" in listed  # the truth is small and part of the results
    assert not {
        "data/world/shard-00000.parquet",
        "cache/encoded/train.safetensors",
        ".hidden.tmp",
        "samples/pipe/.snakemake_timestamp",
        "MANIFEST.json",
    } & set(listed)
    entry = listed["adapters/pipe/checkpoint-10/adapter.safetensors"]
    assert entry["bytes"] == 100
    assert entry["sha256"] == sha256_file(run / "adapters/pipe/checkpoint-10/adapter.safetensors")
    assert manifest["excluded"] == {
        **manifest["excluded"],
        "patterns": config["bundle"]["exclude"],
        "n_files": 2,
    }
    assert manifest["config"] == config and manifest["scale"] == "smoke"
    assert "report.html" in manifest["not_hashed"]
    assert manifest["packages"]["numpy"] != "not installed"
    assert set(manifest["code"]) >= {"commit", "dirty"}
    assert verify_manifest(run) == []


def test_verify_manifest_catches_every_change(tmp_path: Path, config: dict) -> None:
    run = make_run(tmp_path)
    assert bundle(run, config) == 0
    (run / "tables" / "win_rates.md").write_text("| b |\n")  # same size, new content
    (run / "samples" / "pipe" / "step-10" / "u3.png").unlink()
    (run / "figures" / "checkpoint_curves.png").write_text("png!")  # size changes
    (run / "figures" / "extra.png").write_text("new")
    (run / "cache" / "other.bin").write_text("excluded, so fine")
    (run / "report.html").write_text("written after the bundle")
    (run / ".tmp.partial").write_text("hidden, so fine")
    assert sorted(verify_manifest(run)) == sorted(
        [
            "sha256 differs: tables/win_rates.md",
            "missing: samples/pipe/step-10/u3.png",
            "size differs: figures/checkpoint_curves.png (4 bytes, manifest 3)",
            "not in manifest: figures/extra.png",
        ]
    )


def test_verify_manifest_without_manifest(tmp_path: Path) -> None:
    assert verify_manifest(tmp_path) == [f"{tmp_path / 'MANIFEST.json'}: missing"]
    (tmp_path / "MANIFEST.json").write_text("{}")
    assert "not a prefgen manifest" in verify_manifest(tmp_path)[0]


def test_readme_describes_every_file(tmp_path: Path, config: dict) -> None:
    run = make_run(tmp_path)
    assert bundle(run, config) == 0
    text = (run / "README.md").read_text()
    assert "(no description" not in text
    assert "Stand-ins" in text and "scale `smoke`" in text
    assert "| `samples/ (12 files)` |" in text  # many PNGs are one row
    assert "`tables/win_rates.csv`" in text and "PIPE Table 1" in text
    # the headline is the users=all slice of the win-rate table
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| pipe")]
    assert [[c.strip() for c in r] for r in rows] == [
        ["pipe", "base", "oracle", "3", "120", "0.7", "0.6", "0.8", "shown"],
        ["pipe", "dpo", "oracle", "3", "120", "0.55", "0.45", "0.65", "not shown"],
    ]
    assert "python -m prefgen.evaluation.manifest verify results/smoke" in text


def test_manifest_is_deterministic(tmp_path: Path, config: dict) -> None:
    run = make_run(tmp_path)
    assert bundle(run, config) == 0
    first = (run / "MANIFEST.json").read_bytes(), (run / "README.md").read_bytes()
    assert bundle(run, config) == 0
    assert ((run / "MANIFEST.json").read_bytes(), (run / "README.md").read_bytes()) == first


def test_descriptions_cover_the_contract_paths() -> None:
    for rel in [
        "tables/judge_agreement.csv",
        "tables/checkpoint_metrics.tex",
        "figures/samples_user_type0.png",
        "scores/pipe.parquet",
        "scores/external/pipe.json",
        "embeddings/pipe.safetensors",
        "splits/eval_set.parquet",
        "models/foundation/unet/config.json",
    ]:
        assert not describe(rel).startswith("(no description"), rel
    assert len({p for p, _ in DESCRIPTIONS}) == len(DESCRIPTIONS)


def test_git_info_outside_a_repository(tmp_path: Path) -> None:
    info = git_info(tmp_path)
    assert info["commit"] == "unknown" and info["dirty"] is None


def test_headline_shows_seeds_and_verdicts(tmp_path: Path, config: dict) -> None:
    run = make_run(tmp_path)
    assert bundle(run, config) == 0
    readme = (run / "README.md").read_text()
    head = readme.split("## Headline")[1].split("## Files")[0]
    table = [line for line in head.splitlines() if line.startswith("|")]
    assert "n_seeds" in table[0] and "verdict" in table[0]
    assert len(table) == 2 + 2  # header, rule, the two all-user rows (not the seen row)
    assert "| shown" in table[2] and "| not shown" in table[3]
    assert "**not shown** = the CI contains 0.5" in head


def test_headline_is_read_from_the_csv(tmp_path: Path, config: dict) -> None:
    run = make_run(tmp_path)
    (run / "tables" / "win_rates.csv").unlink()
    assert bundle(run, config) == 0
    assert "_tables/win_rates.csv is not in this bundle._" in (run / "README.md").read_text()


def test_measured_wall_seconds_are_declared_and_leave_the_readme_unchanged(
    tmp_path: Path, config: dict
) -> None:
    """tables/wall_seconds is hashed but declared measured; a rerun that measured other seconds
    (another size, too) changes that file and its hash only: README.md stays the same bytes."""
    run = make_run(tmp_path)
    wall = run / "tables" / "wall_seconds.csv"
    wall.write_text("method,train_seed,stage,wall_seconds\npipe,0,train,9.8\n")
    assert bundle(run, config) == 0
    manifest = json.loads((run / "MANIFEST.json").read_text())
    assert manifest["measured"]["files"] == ["tables/wall_seconds.csv"]
    assert "tables/wall_seconds.csv" in {f["path"] for f in manifest["files"]}
    readme = (run / "README.md").read_text()
    assert "| `tables/wall_seconds.csv` | measured |" in readme
    wall.write_text("method,train_seed,stage,wall_seconds\npipe,0,train,1234.5\n")
    assert bundle(run, config) == 0
    assert (run / "README.md").read_text() == readme
    assert verify_manifest(run) == []
