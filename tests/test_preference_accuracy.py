"""The user-model stages end to end on a freshly generated smoke world, plus the bootstrap.

One module-scoped run builds the smoke world (config/smoke.yaml) and calls every stage the way
its rule does (`prefgen <command> --params ...`): world, ingest, split-pipe, clip, features,
fit-pasta (both variants), fit-lambda, preference-accuracy, user-model-recovery,
user-model-ceiling. The checks
below read the files those stages wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from prefgen.cli import main
from prefgen.core.config import load_config
from prefgen.user_model.accuracy import COLUMNS, accuracy_table, user_bootstrap

REPO = Path(__file__).resolve().parents[1]

#: Acceptance on smoke (issue 4): same ordering as mini with a looser margin (measured: +0.065,
#: pipe 0.701 vs population 0.636 on 354 test pairs of 74 users).
SMOKE_MIN_MARGIN = 0.04


def cli(command: str, params: dict, *args: str | Path) -> None:
    code = main([command, "--params", json.dumps(params, sort_keys=True), *map(str, args)])
    assert code == 0, f"prefgen {command} exited with {code}"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = load_config(REPO / "config" / "smoke.yaml")
    root = tmp_path_factory.mktemp("smoke_user_model")
    seed = cfg["seed"]
    truth = root / "data" / "truth"
    cli("world", {"seed": seed, "world": cfg["world"]}, "--shards", root / "data" / "world",
        "--world-json", truth / "world.json", "--users", truth / "users.parquet")
    clean = root / "data" / "clean"
    cli("ingest", {"data": cfg["data"]}, "--shards", root / "data" / "world",
        "--pairs", clean / "pairs.parquet", "--images", clean / "images.parquet",
        "--quarantine", clean / "quarantine.parquet", "--stats", clean / "stats.json",
        "--threads", "1")
    pipe = root / "splits" / "pipe"
    cli("split-pipe", {"seed": seed, "held_out_prompts": cfg["split"]["held_out"]["prompts"],
                       "pipe": cfg["split"]["pipe"]}, "--pairs", clean / "pairs.parquet",
        "--out", pipe)
    cli("clip", {"seed": seed, "clip": cfg["clip"]}, "--images", clean / "images.parquet",
        "--pairs", clean / "pairs.parquet", "--out-dir", root / "models" / "clip",
        "--table", root / "tables" / "clip_retrieval.csv", "--threads", "1")
    cli("features", {"features": cfg["features"]}, "--clip-dir", root / "models" / "clip",
        "--images", clean / "images.parquet", "--splits", pipe / "train.parquet",
        pipe / "test.parquet", "--out-dir", root / "features", "--threads", "1")
    um = root / "user_model"
    for variant in ("population", "pasta"):
        pasta = dict(cfg["pasta"])
        if variant == "population":
            pasta = {k: v for k, v in pasta.items() if k not in ("n_types", "restarts")}
        cli("fit-pasta", {"seed": seed, "pasta": pasta}, "--features", root / "features",
            "--train", pipe / "train.parquet", "--variant", variant,
            "--model", um / f"{variant}.safetensors", "--em-log", um / f"{variant}_em.csv",
            "--threads", "1")
    cli("fit-lambda", {"lambda": cfg["lambda"]}, "--features", root / "features",
        "--model", um / "pasta.safetensors", "--train", pipe / "train.parquet",
        "--out", um / "lambda.parquet", "--summary", um / "lambda.json", "--threads", "1")
    acc = {k: v for k, v in cfg["preference_accuracy"].items() if k != "recovery_min_pairs"}
    cli("preference-accuracy", {"seed": seed, "scale": cfg["scale"], "preference_accuracy": acc},
        "--features", root / "features", "--pasta", um / "pasta.safetensors",
        "--population", um / "population.safetensors", "--lambdas", um / "lambda.parquet",
        "--lambda-summary", um / "lambda.json", "--train", pipe / "train.parquet",
        "--test", pipe / "test.parquet", "--truth", truth, "--images", clean / "images.parquet",
        "--table", root / "tables" / "preference_accuracy.csv",
        "--figure", root / "figures" / "accuracy_vs_history.png",
        "--summary", um / "preference_accuracy.json")
    cli("user-model-recovery", {"preference_accuracy": {
        "recovery_min_pairs": cfg["preference_accuracy"]["recovery_min_pairs"]}},
        "--features", root / "features", "--pasta", um / "pasta.safetensors",
        "--lambdas", um / "lambda.parquet", "--test", pipe / "test.parquet", "--truth", truth,
        "--images", clean / "images.parquet",
        "--table", root / "tables" / "user_model_recovery.csv")
    ceiling = {k: v for k, v in cfg["preference_accuracy"].items() if k != "recovery_min_pairs"}
    cli("user-model-ceiling", {"seed": seed, "pasta": {"interaction": cfg["pasta"]["interaction"]},
                               "lambda": cfg["lambda"], "preference_accuracy": ceiling},
        "--features", root / "features", "--train", pipe / "train.parquet",
        "--test", pipe / "test.parquet", "--truth", truth, "--images", clean / "images.parquet",
        "--accuracy", root / "tables" / "preference_accuracy.csv",
        "--table", root / "tables" / "user_model_ceiling.csv", "--threads", "1")
    yield root
    torch.set_num_threads(before)


def test_clip_retrieval_far_above_chance(run: Path) -> None:
    table = pd.read_csv(run / "tables" / "clip_retrieval.csv")
    held = table[(table["split"] == "held_out")].iloc[0]
    assert held["accuracy"] > 2 * held["chance"], table
    assert "stand-in" in held["model"]


def test_accuracy_table_contract(run: Path) -> None:
    table = pd.read_csv(run / "tables" / "preference_accuracy.csv")
    assert list(table.columns) == COLUMNS
    assert set(table["method"]) == {"pipe", "population", "mean_lambda", "best_type", "oracle"}
    assert (table["split"] == "seen").all()
    assert table["n_pairs"].nunique() == 1 and table["n_users"].nunique() == 1
    assert ((table["ci_low"] <= table["accuracy"]) & (table["accuracy"] <= table["ci_high"])).all()
    for ext in ("md", "tex"):
        assert "Stand-in" in (run / "tables" / f"preference_accuracy.{ext}").read_text()
    assert (run / "figures" / "accuracy_vs_history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_smoke_ordering_pipe_beats_population_oracle_bounds(run: Path) -> None:
    """Issue 4 acceptance on smoke: population < pipe <= oracle, with a margin."""
    acc = pd.read_csv(run / "tables" / "preference_accuracy.csv").set_index("method")
    summary = json.loads((run / "user_model" / "preference_accuracy.json").read_text())
    assert acc.loc["pipe", "accuracy"] > acc.loc["population", "accuracy"] + SMOKE_MIN_MARGIN, acc
    assert acc.loc["oracle", "accuracy"] >= acc.loc["pipe", "accuracy"] - 0.01, acc
    assert acc.loc["pipe", "accuracy"] > acc.loc["mean_lambda", "accuracy"], acc
    # 74 smoke users are too few for a paired CI that excludes 0 (mini's acceptance); the
    # summary must still report the same difference and an interval around it
    low, high = summary["pipe_minus_population_ci"]
    diff = acc.loc["pipe", "accuracy"] - acc.loc["population", "accuracy"]
    assert summary["pipe_minus_population"] == pytest.approx(diff)
    assert low < diff < high and high > SMOKE_MIN_MARGIN, summary
    assert 0 < summary["gap_closed"] <= 1.05


def test_em_log_never_decreases(run: Path) -> None:
    for variant in ("pasta", "population"):
        em = pd.read_csv(run / "user_model" / f"{variant}_em.csv")
        for _, log in em.groupby("restart"):
            assert (np.diff(log["objective"].to_numpy()) >= 0).all(), (variant, log)


def test_lambda_table_covers_every_training_user(run: Path) -> None:
    lam = pd.read_parquet(run / "user_model" / "lambda.parquet")
    train = pd.read_parquet(run / "splits" / "pipe" / "train.parquet")
    cfg = load_config(REPO / "config" / "smoke.yaml")
    k = cfg["pasta"]["n_types"]
    assert list(lam.columns) == ["user_id", *[f"lambda_{i}" for i in range(k)], "n_pairs",
                                 "n_informative", "fallback"]
    assert set(lam["user_id"]) == set(train["user_id"])
    assert lam.notna().all().all()
    counts = train.groupby("user_id").size()
    assert (lam.set_index("user_id")["n_pairs"] == counts.loc[lam["user_id"]].to_numpy()).all()
    summary = json.loads((run / "user_model" / "lambda.json").read_text())
    mu = np.array(summary["population_lambda"])
    fb = lam[lam["fallback"]]
    assert np.allclose(fb[[f"lambda_{i}" for i in range(k)]].to_numpy(), mu)


def test_recovery_matches_planted_types(run: Path) -> None:
    rec = pd.read_csv(run / "tables" / "user_model_recovery.csv")
    world = json.loads((run / "data" / "truth" / "world.json").read_text())
    assert len(rec) == len(world["types"]) + 1
    overall = rec[rec["planted_type"] == "all"].iloc[0]
    assert overall["user_reward_corr_median"] > 0.5, rec
    assert overall["lambda_corr_projected"] > 0.3, rec


def test_ceiling_orders_the_sources_of_phi(run: Path) -> None:
    """Better φ, same λ regression: planted φ beats φ regressed from CLIP, which beats nothing.

    λ fitted on the planted type rewards must come close to the oracle (only λ is estimated);
    φ regressed on them from the CLIP features lies between population and that; the copied
    rows equal the preference-accuracy table's.
    """
    ceil = pd.read_csv(run / "tables" / "user_model_ceiling.csv").set_index("method")
    acc = pd.read_csv(run / "tables" / "preference_accuracy.csv").set_index("method")
    assert list(ceil.index) == ["population", "pipe", "pipe_supervised_phi", "pipe_true_phi",
                                "oracle"]
    for m in ("population", "pipe", "oracle"):
        assert ceil.loc[m, "accuracy"] == pytest.approx(acc.loc[m, "accuracy"])
    gap = ceil["gap_closed"]
    assert gap["population"] == pytest.approx(0) and gap["oracle"] == pytest.approx(1)
    assert gap["pipe_true_phi"] > 0.7, ceil
    assert 0.2 < gap["pipe_supervised_phi"] < gap["pipe_true_phi"] + 0.05, ceil
    assert "R²" in (run / "tables" / "user_model_ceiling.md").read_text()


def test_scorer_agrees_with_cached_features(run: Path) -> None:
    from prefgen.user_model.features import FeatureStore
    from prefgen.user_model.imageio import load_images
    from prefgen.user_model.pasta import load_reward_model
    from prefgen.user_model.scorer import UserModelScorer

    scorer = UserModelScorer.from_run(run)
    train = pd.read_parquet(run / "splits" / "pipe" / "train.parquet").head(16)
    images = load_images(run / "data" / "clean" / "images.parquet", train["image_w_uid"].tolist())
    captions = train["caption"].tolist()
    users = train["user_id"].to_numpy()
    pipe = scorer.pipe(images, captions, users)
    store = FeatureStore.load(run / "features")
    img = store.image_emb[store.image_rows(train["image_w_uid"])]
    txt = store.caption_emb[store.caption_rows(train["caption"])]
    with torch.no_grad():
        phi = load_reward_model(run / "user_model" / "pasta.safetensors").phi(img, txt).double()
    lam = pd.read_parquet(run / "user_model" / "lambda.parquet").set_index("user_id")
    expected = (phi.numpy() * lam.loc[users, [f"lambda_{i}" for i in range(phi.shape[1])]]
                .to_numpy()).sum(1)
    # the scorer decodes the JPEGs and runs CLIP again, batched its own way; the cache was
    # written by the features stage: float32 features, rewards of order 1
    np.testing.assert_allclose(pipe, expected, rtol=1e-4, atol=1e-4)
    # PIL input of another size goes through open_clip's preprocess and still scores
    from PIL import Image

    big = [Image.fromarray(x).resize((64, 64)) for x in images[:3]]
    assert np.isfinite(scorer.pipe(big, captions[:3], users[:3])).all()
    assert scorer.population(images, captions).shape == (16,)
    clip = scorer.clip_score(images, captions)
    assert (clip >= 0).all() and (clip <= 100).all()
    with pytest.raises(KeyError, match="user_id 999999999"):
        scorer.pipe(images[:1], captions[:1], [999999999])


def test_bootstrap_is_shared_and_deterministic() -> None:
    gen = np.random.default_rng(0)
    user = np.repeat(np.arange(40), 10)
    a = (gen.random(400) < 0.7).astype(float)
    correct = {"x": a, "y": a.copy(), "z": (gen.random(400) < 0.5).astype(float)}
    t1, b1 = accuracy_table(correct, user, 40, "seen", 500, seed=3, level=0.9)
    t2, _ = accuracy_table(correct, user, 40, "seen", 500, seed=3, level=0.9)
    pd.testing.assert_frame_equal(t1, t2)
    rows = t1.set_index("method")
    assert rows.loc["x", "ci_low"] == rows.loc["y", "ci_low"]  # same draws for every method
    # the interval brackets the observed accuracy (the true 0.7 may fall outside a 90% CI)
    assert rows.loc["x", "accuracy"] == pytest.approx(a.mean())
    assert rows.loc["x", "ci_low"] < a.mean() < rows.loc["x", "ci_high"]
    assert rows.loc["x", "ci_high"] - rows.loc["x", "ci_low"] < 0.2
    boot, sums = user_bootstrap(np.stack([a]), user, 40, 200, seed=1)
    assert boot.shape == (200, 1) and sums.shape == (1, 40)
