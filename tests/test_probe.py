"""The user-classification probe (PPD Fig. 2): draws, classifier, top-K table, the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefgen.cli import main as cli_main
from prefgen.embeddings import ppd, probe

from tests.test_vlm_embeddings import EMB_CFG, VLM_CFG, make_world

PROBE_CFG = {
    "n_draws": 3,
    "max_users": 50,
    "top_k": [1, 2, 5],
    "l2": 1.0,
    "max_iter": 100,
    "label_shuffle_control": True,
}


def clustered(n_users: int, n_draws: int, dim: int, spread: float, seed: int = 0) -> np.ndarray:
    """Each user a random centre, each draw the centre plus noise of std ``spread``."""
    gen = np.random.default_rng(seed)
    centres = gen.standard_normal((n_users, 1, dim))
    return centres + spread * gen.standard_normal((n_users, n_draws, dim))


def test_probe_finds_users_whose_draws_agree() -> None:
    table = probe.probe_representation(clustered(40, 3, 16, 0.1), [1, 5], PROBE_CFG, seed=0)
    assert table["top_k_accuracy"].tolist() == [1.0, 1.0]
    assert table["chance"].tolist() == [1 / 40, 5 / 40]
    assert (table["n_users"] == 40).all() and (table["dim"] == 16).all()


def test_probe_is_at_chance_without_user_signal() -> None:
    gen = np.random.default_rng(1)
    noise = gen.standard_normal((60, 3, 16))
    table = probe.probe_representation(noise, [1, 10, 30], PROBE_CFG, seed=0)
    for row in table.itertuples():
        assert row.ci_low <= row.chance + 0.02 and row.top_k_accuracy < row.chance + 0.12
    # a representation that is the same for everyone identifies nobody (ties count against)
    const = probe.probe_representation(np.ones((10, 3, 4)), [1, 5], PROBE_CFG, seed=0)
    assert const["top_k_accuracy"].tolist() == [0.0, 0.0]


def test_noisier_draws_score_lower() -> None:
    tight = probe.probe_ranks(clustered(50, 4, 8, 0.5), l2=1.0, max_iter=100)
    loose = probe.probe_ranks(clustered(50, 4, 8, 2.0), l2=1.0, max_iter=100)
    assert (tight == 0).mean() > (loose == 0).mean() + 0.2
    table = probe.topk_table(loose, [1, 3, 10, 50], seed=0)
    assert table["top_k_accuracy"].is_monotonic_increasing
    assert table["top_k_accuracy"].iloc[-1] == 1.0
    assert (table["ci_low"] <= table["top_k_accuracy"]).all()
    assert (table["top_k_accuracy"] <= table["ci_high"]).all()


def test_difference_interval_is_paired() -> None:
    """ppd minus its control: a consistent small gain is significant though both intervals
    overlap; identical ranks give exactly 0."""
    gen = np.random.default_rng(0)
    control = gen.integers(0, 40, size=(200, 4))
    better = control.copy()
    better[gen.random(200) < 0.15, 0] = 0  # some users' first draw found at rank 0
    diff = probe.difference_table(better, control, [1, 5], seed=0)
    top1 = diff.iloc[0]
    assert top1["top_k_accuracy"] > 0 and top1["ci_low"] > 0 and diff["chance"].eq(0).all()
    alone = probe.topk_table(better, [1], seed=0).iloc[0]
    against = probe.topk_table(control, [1], seed=0).iloc[0]
    assert alone["ci_low"] < against["ci_high"]  # the two unpaired intervals overlap
    same = probe.difference_table(control, control, [1, 5], seed=0)
    assert (same[["top_k_accuracy", "ci_low", "ci_high"]] == 0).all().all()
    with pytest.raises(ValueError, match="shape"):
        probe.difference_table(control, control[:10], [1], seed=0)


def test_label_shuffle_swaps_about_half_the_pairs(tmp_path: Path) -> None:
    paths = make_world(tmp_path, {u: 12 for u in range(1, 9)})
    draws = ppd.disjoint_draws(ppd.read_split(paths["train"]), 3, 4, True, seed=0, max_users=10)
    shuffled = probe.shuffle_labels(draws, seed=0)
    swapped = shuffled["image_w_uid"] != draws["image_w_uid"]
    assert 0.3 < swapped.mean() < 0.7
    assert (shuffled.loc[swapped, "image_w_uid"] == draws.loc[swapped, "image_l_uid"]).all()
    assert (shuffled.loc[swapped, "image_l_uid"] == draws.loc[swapped, "image_w_uid"]).all()
    same = ["ranking_id", "user_id", "caption", "draw", "rank"]
    pd.testing.assert_frame_equal(shuffled[same], draws[same])
    pd.testing.assert_frame_equal(probe.shuffle_labels(draws, seed=0), shuffled)


def test_disjoint_draws(tmp_path: Path) -> None:
    paths = make_world(tmp_path, {1: 12, 2: 11, 3: 13, 4: 25, 5: 30}, ties={2: 1, 4: 3})
    train = ppd.read_split(paths["train"])
    draws = ppd.disjoint_draws(train, n_draws=3, n_shots=4, exclude_ties=True, seed=0, max_users=10)
    # user 2 has 10 usable pairs < 3 x 4; the others are probed
    assert sorted(draws["user_id"].unique()) == [1, 3, 4, 5]
    assert not draws["is_tie"].any()
    # every usable pair of a probed user is in exactly one draw; each draw has >= n_shots pairs
    assert not draws["ranking_id"].duplicated().any()
    usable = train[~train["is_tie"] & train["user_id"].isin([1, 3, 4, 5])]
    assert set(draws["ranking_id"]) == set(usable["ranking_id"])
    sizes = draws.groupby(["user_id", "draw"]).size()
    assert sizes.min() >= 4 and set(draws["draw"]) == {0, 1, 2}
    assert (draws.groupby(["user_id", "draw"])["rank"].min() == 0).all()
    again = ppd.disjoint_draws(train, 3, 4, True, seed=0, max_users=10)
    pd.testing.assert_frame_equal(draws, again)
    capped = ppd.disjoint_draws(train, 3, 4, True, seed=0, max_users=2)
    assert capped["user_id"].nunique() == 2


def test_probe_command_writes_labelled_table(tmp_path: Path) -> None:
    users = {u: 12 + (u % 5) for u in range(1, 13)}
    paths = make_world(tmp_path, users)
    params = {"seed": 0, "vlm": VLM_CFG, "ppd": {"embedding": EMB_CFG, "probe": PROBE_CFG}}
    stem = tmp_path / "tables" / "user_embedding_probe"
    code = cli_main(
        [
            "user-embedding-probe",
            "--params",
            json.dumps(params),
            "--train",
            str(paths["train"]),
            "--images",
            str(paths["images"]),
            "--out",
            str(stem),
            "--draws",
            str(tmp_path / "draws.parquet"),
        ]
    )
    assert code == 0
    table = pd.read_csv(stem.with_suffix(".csv"))
    assert list(table.columns) == probe.PROBE_COLUMNS
    assert table["method"].tolist() == (
        ["ppd"] * 3 + ["ppd_label_shuffled"] * 3 + ["ppd_minus_label_shuffled"] * 3
    )
    assert table["vlm_stand_in"].all() and (table["n_users"] == 12).all()
    assert table["chance"].tolist() == pytest.approx([1 / 12, 2 / 12, 5 / 12] * 2 + [0.0] * 3)
    by = table.set_index(["method", "k"])["top_k_accuracy"]
    for k in (1, 2, 5):
        assert by[("ppd_minus_label_shuffled", k)] == pytest.approx(
            by[("ppd", k)] - by[("ppd_label_shuffled", k)]
        )
    assert "stand-in" in stem.with_suffix(".md").read_text()
    draws = pd.read_parquet(tmp_path / "draws.parquet")
    assert draws.groupby("user_id")["draw"].nunique().eq(3).all()


def test_pipe_draws_refit_lambda_on_each_draw(tmp_path: Path) -> None:
    """PIPE rows: E = lambda^T W with lambda fitted on each (user, draw) alone."""
    import torch
    from prefgen.core.io import save_tensors
    from prefgen.user_model.features import FeatureStore
    from prefgen.user_model.lambda_fit import fit_users
    from prefgen.user_model.pairs import build_pairs
    from prefgen.user_model.pasta import RewardModel, save_reward_model

    paths = make_world(tmp_path, {u: 12 + u for u in range(1, 7)})
    train = ppd.read_split(paths["train"])
    gen = np.random.default_rng(0)
    feats = tmp_path / "features"
    for name, keys in (
        ("images", sorted(set(train["image_w_uid"]) | set(train["image_l_uid"]))),
        ("captions", sorted(set(train["caption"]))),
    ):
        column = "image_uid" if name == "images" else "caption"
        save_tensors(
            {"emb": torch.as_tensor(gen.standard_normal((len(keys), 8)), dtype=torch.float32)},
            feats / f"{name}.safetensors",
        )
        pd.DataFrame({column: keys, "row": np.arange(len(keys))}).to_parquet(
            feats / f"{name}.parquet", index=False
        )
    torch.manual_seed(0)
    model = RewardModel(dim=8, hidden=6, n_types=3, width=16, depth=2, interaction=False)
    save_reward_model(model, tmp_path / "pasta.safetensors", meta={})
    lambda_cfg = {"l2": 1.0, "prior": "none", "min_informative": 1, "max_iter": 50, "tol": 1e-10}

    draws = ppd.disjoint_draws(train, 3, 4, True, seed=0, max_users=10)
    full = probe.pipe_draw_embedder(str(tmp_path / "pasta.safetensors"), str(feats), lambda_cfg)(
        draws
    )
    nshot = probe.pipe_draw_embedder(
        str(tmp_path / "pasta.safetensors"), str(feats), lambda_cfg, n_shots=4
    )(draws)
    assert full.shape == nshot.shape == (6, 3, 6) and np.isfinite(full).all()
    assert not np.allclose(full, nshot)

    store = FeatureStore.load(feats)
    one = draws[(draws["user_id"] == 4) & (draws["draw"] == 1)]
    fit, _ = fit_users(model, build_pairs(one, store), store, lambda_cfg)
    expected = fit.lam[0] @ model.W.detach().double().numpy()
    # one user's refit alone vs inside the embedder's batch: float64 Newton to a 1e-10
    # decrement, so the two agree far below 1e-6; only summation order differs
    np.testing.assert_allclose(full[3, 1], expected, rtol=1e-6, atol=1e-9)
