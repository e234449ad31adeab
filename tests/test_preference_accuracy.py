"""The user-model stages end to end on a freshly generated smoke world, plus the bootstrap.

One module-scoped run builds the smoke world (config/smoke.yaml) and runs every stage up to the
user-model tables with its rule's own command line (see tests/rule_commands.py): world, ingest,
split-pipe, clip, features, fit-pasta (both variants), fit-lambda, preference-accuracy,
user-model-recovery, user-model-ceiling. The checks below read the files those stages wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from prefgen.core.config import load_config
from prefgen.user_model.accuracy import COLUMNS, accuracy_table, user_bootstrap

from tests.rule_commands import run_rules
from tests.workflow_copy import copy_workflow

REPO = Path(__file__).resolve().parents[1]
CONFIG = "config/smoke.yaml"

#: Acceptance on smoke: same ordering as mini with a looser margin. Measured +0.031 (pipe 0.662
#: vs population 0.631 on 325 test pairs of 63 users) since the held-out users (11 of the
#: heaviest) left PIPE's training data; mini keeps +0.088 (0.724 vs 0.635, 410 users).
SMOKE_MIN_MARGIN = 0.02

#: What the module's run makes; the rules' DAG brings in everything upstream.
TARGETS = [
    "tables/preference_accuracy.csv",
    "tables/user_model_recovery.csv",
    "tables/user_model_ceiling.csv",
    "tables/clip_retrieval.csv",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke run's folder (results/smoke of a workflow copy) after the user-model stages."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = copy_workflow(tmp_path_factory.mktemp("smoke_user_model"))
    out = f"results/{load_config(REPO / CONFIG)['run_name']}"
    ran = run_rules(root, [f"{out}/{t}" for t in TARGETS], CONFIG)
    assert {"preference-accuracy", "user-model-recovery", "user-model-ceiling"} <= set(ran), ran
    yield root / out
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
    """Acceptance on smoke: population < pipe <= oracle, with a margin."""
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
    assert list(lam.columns) == [
        "user_id",
        *[f"lambda_{i}" for i in range(k)],
        "n_pairs",
        "n_informative",
        "fallback",
        "fitted_on",
    ]
    support = pd.read_parquet(run / "splits" / "ppd" / "support.parquet")
    assert set(lam["user_id"]) == set(train["user_id"]) | set(support["user_id"])
    assert not set(train["user_id"]) & set(support["user_id"])
    assert lam.notna().all().all()
    # training users from PIPE train, held-out users from their support set alone
    counts = pd.concat([train, support]).groupby("user_id").size()
    assert (lam.set_index("user_id")["n_pairs"] == counts.loc[lam["user_id"]].to_numpy()).all()
    on = lam.set_index("user_id")["fitted_on"]
    assert (on.loc[sorted(set(support["user_id"]))] == "support").all()
    assert (on.loc[sorted(set(train["user_id"]))] == "train").all()
    summary = json.loads((run / "user_model" / "lambda.json").read_text())
    mu = np.array(summary["population_lambda"])
    fb = lam[lam["fallback"]]
    assert np.allclose(fb[[f"lambda_{i}" for i in range(k)]].to_numpy(), mu)


def test_recovery_matches_planted_types(run: Path) -> None:
    rec = pd.read_csv(run / "tables" / "user_model_recovery.csv")
    world = json.loads((run / "data" / "truth" / "world.json").read_text())
    assert len(rec) == len(world["types"]) + 1
    overall = rec[rec["planted_type"] == "all"].iloc[0]
    # smoke has 17 users with >= 50 training pairs: measured median 0.41 (0.52 while PIPE still
    # trained on the held-out users; mini: 0.65 over 138 users), so the bar is "clearly > 0"
    assert overall["user_reward_corr_median"] > 0.3, rec
    assert overall["lambda_corr_projected"] > 0.3, rec


def test_ceiling_orders_the_sources_of_phi(run: Path) -> None:
    """Better φ, same λ regression: planted φ beats φ regressed from CLIP, which beats nothing.

    λ fitted on the planted type rewards must come close to the oracle (only λ is estimated);
    φ regressed on them from the CLIP features lies between population and that; the copied
    rows equal the preference-accuracy table's.
    """
    ceil = pd.read_csv(run / "tables" / "user_model_ceiling.csv").set_index("method")
    acc = pd.read_csv(run / "tables" / "preference_accuracy.csv").set_index("method")
    assert list(ceil.index) == [
        "population",
        "pipe",
        "pipe_supervised_phi",
        "pipe_true_phi",
        "oracle",
    ]
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
    expected = (
        phi.numpy() * lam.loc[users, [f"lambda_{i}" for i in range(phi.shape[1])]].to_numpy()
    ).sum(1)
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
