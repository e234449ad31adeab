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
    assert list(acc.columns) == [
        "method",
        "split",
        "n_users",
        "n_pairs",
        "accuracy",
        "ci_low",
        "ci_high",
    ]
    wins = pd.read_csv(run / "tables" / "win_rates.csv")
    assert {
        "method",
        "opponent",
        "judge",
        "users",
        "n",
        "win_rate",
        "tie_rate",
        "ci_low",
        "ci_high",
    } <= set(wins.columns)
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
    assert not {
        "preference_accuracy",
        "user_model_recovery",
        "fit_lambda",
        "fit_pasta",
        "train_adapter",
    } & set(planned), planned


def test_report_builds_from_the_finished_run(smoke_run: Path) -> None:
    """`make run`'s last step: Snakemake's HTML report with every table's caption."""
    report = smoke_run / "report.html"
    snakemake(
        "--cores",
        "1",
        "--report",
        str(report),
        "all",
        "--configfile",
        "config/smoke.yaml",
        cwd=smoke_run,
    )
    html = report.read_text(errors="replace")
    assert "win_rates.csv" in html and "preference_accuracy.csv" in html


def test_smoke_win_rates_resample_training_seeds(smoke_run: Path) -> None:
    """Every comparison over both smoke seeds, with a verdict, a per-seed row per replicate,
    and the README's headline showing both."""
    run = smoke_run / "results" / "smoke"
    seeds = smoke_config(smoke_run)["train"]["seeds"]
    wins = pd.read_csv(run / "tables" / "win_rates.csv")
    assert (wins["n_seeds"] == len(seeds)).all()
    assert set(wins["verdict"]) <= {"shown", "not shown", "reversed"}
    shown = wins["ci_low"] > 0.5
    assert (wins.loc[shown, "verdict"] == "shown").all()
    assert (wins.loc[~shown & (wins["ci_high"] >= 0.5), "verdict"] == "not shown").all()
    per_seed = pd.read_csv(run / "tables" / "win_rates_per_seed.csv")
    assert len(per_seed) == len(seeds) * len(wins)
    assert set(per_seed["method_seed"].dropna()) == set(seeds)
    base = per_seed[per_seed["opponent"] == "base"]
    assert base["opponent_seed"].isna().all()
    best = pd.read_csv(run / "tables" / "best_checkpoints.csv")
    assert len(best) == 1 + 4 * len(seeds)  # base, then dpo, pipe, ppd, premier per seed
    readme = (run / "README.md").read_text()
    assert "verdict" in readme and "n_seeds" in readme


def test_smoke_budgets_table(smoke_run: Path) -> None:
    run = smoke_run / "results" / "smoke"
    config = smoke_config(smoke_run)
    table = pd.read_csv(run / "tables" / "budgets.csv")
    seeds = config["train"]["seeds"]
    assert len(table) == (3 + 2) * len(seeds)  # dpo, pipe, ppd, Premier stages 1 and 2
    assert (table["examples_seen"] == table["optimizer_steps"] * table["examples_per_step"]).all()
    train = table[table["stage"] == "train"].set_index(["method", "train_seed"])
    t = config["train"]
    assert train.loc[("pipe", seeds[-1]), "examples_seen"] == (
        t["steps"] * t["batch_size"] * t["gradient_accumulation_steps"]
    )
    p = config["premier"]["train"]
    assert train.loc[("premier", seeds[0]), "examples_seen"] == (
        p["steps"] * p["batch_size"] * p["gradient_accumulation_steps"]
    )
    assert (table["trainable_parameters"] > 0).all() and "wall_seconds" not in table
    wall = pd.read_csv(run / "tables" / "wall_seconds.csv")
    assert wall[["method", "train_seed", "stage"]].equals(table[["method", "train_seed", "stage"]])
    assert (wall["wall_seconds"] > 0).all()
    readme = (run / "README.md").read_text()
    assert "budgets.csv" in readme and "| `tables/wall_seconds.csv` | measured |" in readme
    manifest = json.loads((run / "MANIFEST.json").read_text())
    assert manifest["measured"]["files"] == [
        f"tables/wall_seconds{suffix}" for suffix in (".csv", ".md", ".tex")
    ]


def test_a_new_training_seed_retrains_only_its_replicates(smoke_run: Path) -> None:
    """train.seeds is kept out of the training rules' params: adding a seed trains, samples and
    judges the new replicates only, then re-evaluates; the existing seeds are not touched."""
    config = smoke_config(smoke_run)
    config["train"]["seeds"] = [*config["train"]["seeds"], 7]
    planned = planned_jobs(smoke_run, config)
    assert planned["train_adapter"] == 3 and planned["sample"] == 3
    assert planned["train_premier"] == 1 and planned["judge"] == 4
    assert "sample_base" not in planned and "foundation" not in planned
    assert "premier_history" not in planned and "premier_ablation" not in planned
    assert {"evaluate", "budgets", "bundle"} <= set(planned)


def test_one_training_seed_reruns_byte_identically(smoke_run: Path) -> None:
    """Retraining one replicate from scratch gives the same weights, images, scores and win-rate
    tables, byte for byte."""
    run = smoke_run / "results" / "smoke"
    watched = [
        run / "adapters" / "pipe" / "seed1" / "checkpoint-12" / "adapter.safetensors",
        run / "samples" / "pipe" / "seed1" / "index.parquet",
        run / "scores" / "pipe" / "seed1.parquet",
        run / "tables" / "win_rates.csv",
        run / "tables" / "win_rates_per_seed.csv",
        run / "tables" / "best_checkpoints.csv",
    ]
    images = sorted((run / "samples" / "pipe" / "seed1").rglob("*.png"))
    before = {p: p.read_bytes() for p in [*watched, *images]}
    snakemake(
        "--cores",
        "2",
        "results/smoke/scores/pipe/seed1.parquet",
        "--configfile",
        "config/smoke.yaml",
        "--forcerun",
        "train_adapter",
        cwd=smoke_run,
    )
    snakemake("--cores", "2", "all", "--configfile", "config/smoke.yaml", cwd=smoke_run)
    assert planned_jobs(smoke_run, smoke_config(smoke_run)) == {}
    changed = [str(p.relative_to(run)) for p, b in before.items() if p.read_bytes() != b]
    assert not changed, changed


def test_contamination_audit_is_clean_and_complete(smoke_run: Path) -> None:
    """Every consumer against every evaluation set, and no violation in the shipped config."""
    table = pd.read_csv(smoke_run / "results" / "smoke" / "tables" / "contamination.csv")
    assert not (table["verdict"] == "violation").any(), table[table["verdict"] == "violation"]
    assert set(table["evaluation_set"]) == {
        "pipe_test",
        "ppd_test_seen",
        "ppd_test_unseen",
        "lpp_episodes",
        "generation",
    }
    assert {
        "clip",
        "pasta_phi",
        "population",
        "lambda",
        "pasta_phi_lpp",
        "adapter_pipe",
        "ppd_embedding",
        "premier_stage1_and_2",
        "lpp",
        "user_probe",
        "ppd_vlm_pretrain",
        "judge_pipe_checkpoint_selection",
    } <= set(table["consumer"])
    assert table.groupby("consumer").size().eq(5).all()
    # what was shared before the fixes is now clean where it is scored
    scored = table.loc[table["evaluated_on"] != "-"].set_index(["consumer", "evaluation_set"])
    for key in [
        ("pasta_phi_lpp", "lpp_episodes"),
        ("population_lpp", "lpp_episodes"),
        ("judge_pipe_checkpoint_selection", "generation"),
        ("clip", "generation"),
    ]:
        assert scored.loc[key, "verdict"] == "clean", key


def test_unseen_users_are_known_only_by_their_support_set(smoke_run: Path) -> None:
    run = smoke_run / "results" / "smoke"
    n = smoke_config(smoke_run)["split"]["held_out"]["support_pairs"]
    support = pd.read_parquet(run / "splits" / "ppd" / "support.parquet")
    es = pd.read_parquet(run / "splits" / "eval_set.parquet")
    unseen = set(es.loc[es["user_group"] == "unseen", "user_id"])
    lam = pd.read_parquet(run / "user_model" / "lambda.parquet").set_index("user_id")
    assert (lam.loc[sorted(unseen), "fitted_on"] == "support").all()
    assert (lam.loc[sorted(unseen), "n_pairs"] == n).all()
    shots = pd.read_parquet(run / "embeddings" / "ppd_shots.parquet")
    theirs = shots.loc[shots["user_id"].isin(unseen)]
    assert set(theirs["ranking_id"]) <= set(support["ranking_id"])


def test_a_planted_leak_fails_the_audit_and_names_it(smoke_run: Path) -> None:
    """PIPE test pairs fed into PIPE's training split: the audit rule fails and says where.

    Runs last: it re-runs only the audit (params trigger only, so the tampered split does not
    retrain anything), then restores the split and the audit's clean table.
    """
    import shutil

    run = smoke_run / "results" / "smoke"
    train = run / "splits" / "pipe" / "train.parquet"
    backup = smoke_run / "train.parquet.orig"
    shutil.copy2(train, backup)
    target = "results/smoke/tables/contamination.csv"
    audit_only = (
        "--cores",
        "1",
        target,
        "--configfile",
        "config/smoke.yaml",
        "--forcerun",
        "audit_contamination",
        "--rerun-triggers",
        "params",
    )
    try:
        test = pd.read_parquet(run / "splits" / "pipe" / "test.parquet")
        pd.concat([pd.read_parquet(train), test.iloc[:3]]).to_parquet(train, index=False)
        proc = snakemake(*audit_only, cwd=smoke_run, check=False)
        assert proc.returncode != 0
        log = (
            smoke_run / "logs" / "smoke" / "audit_contamination" / "audit_contamination.log"
        ).read_text()
        assert "pasta_phi on pipe_test (preference_accuracy): 3 shared labelled pairs" in log
        assert not (run / "tables" / "contamination.csv").exists()
    finally:
        shutil.copy2(backup, train)
        snakemake(*audit_only, cwd=smoke_run)
