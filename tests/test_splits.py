"""Split invariants: PIPE, PPD, LPP and the evaluation set, on the smoke world."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from prefgen.data.eval_set import build_eval_set
from prefgen.data.splits import (
    held_out_prompts,
    load_pairs,
    nontie_counts,
    split_lpp,
    split_pipe,
    split_ppd,
    without_prompts,
)

from tests.data_world import REPO, make_clean, make_world, smoke_config, world_params


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("splits")
    config = smoke_config()
    world = make_world(root, world_params(config))
    clean = make_clean(root, world["shards"])
    pairs = load_pairs(clean["pairs"])
    seed, split = config["seed"], config["split"]
    pipe = split_pipe(pairs, {"seed": seed, "held_out": split["held_out"], "pipe": split["pipe"]})
    ppd = split_ppd(pairs, {"seed": seed, "held_out": split["held_out"], "ppd": split["ppd"]})
    lpp = split_lpp(pairs, {"seed": seed, "held_out": split["held_out"], "lpp": split["lpp"]})
    return {
        "config": config,
        "pairs": pairs,
        "pipe": pipe,
        "ppd": ppd,
        "lpp": lpp,
        "users": pd.read_parquet(world["users"]),
    }


def test_pipe_train_and_test_are_disjoint_and_test_has_no_ties(data: dict[str, Any]) -> None:
    train, test = data["pipe"]["train"], data["pipe"]["test"]
    assert not set(train["ranking_id"]) & set(test["ranking_id"])
    assert not test["is_tie"].any()
    assert len(test) > 0.05 * len(train)
    # every tie is kept in train, with one of its two images as a random winner
    pairs = data["pairs"].set_index("ranking_id")
    unseen = set(data["pipe"]["unseen_prompts"]["caption"])
    held = set(data["ppd"]["test_unseen"]["user_id"]) | set(data["ppd"]["support"]["user_id"])
    kept_ties = pairs.loc[
        pairs["is_tie"] & ~pairs["caption"].isin(unseen) & ~pairs["user_id"].isin(held)
    ]
    tr = train.set_index("ranking_id")
    assert set(kept_ties.index) <= set(tr.index)
    w = tr.loc[kept_ties.index, "image_w_uid"]
    assert ((w == kept_ties["image_0_uid"]) | (w == kept_ties["image_1_uid"])).all()
    assert tr.loc[kept_ties.index, "is_tie"].all()
    assert 0.2 < (w == kept_ties["image_0_uid"]).mean() < 0.8, "tie winners are random"


def test_pipe_winners_follow_the_labels(data: dict[str, Any]) -> None:
    pairs = data["pairs"].set_index("ranking_id")
    test = data["pipe"]["test"].set_index("ranking_id")
    p = pairs.loc[test.index]
    expected = np.where(p["label_0"] > p["label_1"], p["image_0_uid"], p["image_1_uid"])
    assert (test["image_w_uid"].to_numpy() == expected).all()


def test_pipe_per_user_test_share_is_within_one_pair_of_ten_percent(data: dict[str, Any]) -> None:
    frac = data["config"]["split"]["pipe"]["test_fraction"]
    unseen = set(data["pipe"]["unseen_prompts"]["caption"])
    held = set(data["ppd"]["support"]["user_id"])
    pairs = data["pairs"][
        ~data["pairs"]["caption"].isin(unseen) & ~data["pairs"]["user_id"].isin(held)
    ]
    n = nontie_counts(pairs)
    t = data["pipe"]["test"].groupby("user_id").size().reindex(n.index, fill_value=0)
    assert (np.abs(t - frac * n) <= 1.0).all()
    heavy = n[n >= 30].index
    assert len(heavy) > 5 and (t[heavy] > 0).all()


def test_unseen_prompts_are_absent_from_every_split(data: dict[str, Any]) -> None:
    unseen = data["pipe"]["unseen_prompts"]
    assert len(unseen) == data["config"]["split"]["held_out"]["prompts"]
    assert unseen["prompt_id"].is_unique and unseen["caption"].is_unique
    caps = set(unseen["caption"])
    tables = [data["pipe"]["train"], data["pipe"]["test"]]
    tables += [data["ppd"][k] for k in ("train", "val", "test_seen", "test_unseen", "support")]
    tables += [data["lpp"]["references"], data["lpp"]["train_items"], data["lpp"]["episodes"]]
    for df in tables:
        assert not set(df["caption"]) & caps
    episodes = data["lpp"]["episodes"]
    assert not {c for cs in episodes["candidate_captions"] for c in cs} & caps
    # and the held-out prompts are real prompts of the data, not invented ones
    assert caps <= set(data["pairs"]["caption"])


def test_ppd_splits_are_disjoint_and_unseen_users_never_train(data: dict[str, Any]) -> None:
    ppd = data["ppd"]
    names = ("train", "val", "test_seen", "test_unseen", "support")
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not set(ppd[a]["ranking_id"]) & set(ppd[b]["ranking_id"]), (a, b)
    unseen_users = set(ppd["test_unseen"]["user_id"])
    assert unseen_users
    for name in ("train", "val", "test_seen"):
        assert not unseen_users & set(ppd[name]["user_id"]), name
    assert not set(ppd["test_seen"]["user_id"]) - set(ppd["train"]["user_id"])
    # held-out captions of test_seen never appear in train or val
    assert not set(ppd["test_seen"]["caption"]) & (
        set(ppd["train"]["caption"]) | set(ppd["val"]["caption"])
    )
    for name in ("val", "test_seen", "test_unseen"):
        assert not ppd[name]["is_tie"].any(), name


def test_ppd_drops_users_with_fewer_than_min_pairs_and_counts_them(data: dict[str, Any]) -> None:
    ho = data["config"]["split"]["held_out"]
    rest = without_prompts(
        data["pairs"], held_out_prompts(data["pairs"], ho["prompts"], data["config"]["seed"])
    )
    n = nontie_counts(rest).reindex(rest["user_id"].unique(), fill_value=0)
    small = set(n[n < ho["min_pairs"]].index)
    assert small, "the smoke world has users with few pairs"
    ppd = data["ppd"]
    for name in ("train", "val", "test_seen", "test_unseen"):
        assert not small & set(ppd[name]["user_id"])
    assert ppd["stats"]["dropped"][f"users_with_fewer_than_{ho['min_pairs']}_nontie_pairs"] == len(
        small
    )
    # unseen users have enough examples for PPD's few-shot conditioning
    held = pd.concat([ppd["test_unseen"], ppd["support"]])
    assert (held.groupby("user_id").size() >= ho["min_pairs"]).all()


def test_unseen_users_have_one_support_set_and_no_pipe_pairs(data: dict[str, Any]) -> None:
    """A held-out user's pairs: N support pairs (what every method may see) + test_unseen."""
    ppd, pipe = data["ppd"], data["pipe"]
    n = data["config"]["split"]["held_out"]["support_pairs"]
    support = ppd["support"]
    assert (support.groupby("user_id").size() == n).all()
    assert not support["is_tie"].any()
    held = set(support["user_id"])
    assert held == set(ppd["test_unseen"]["user_id"]) | held and held
    for name in ("train", "test"):
        assert not held & set(pipe[name]["user_id"]), f"held-out user in PIPE {name}"
    assert pipe["stats"]["held_out_users"] == len(held)
    # support + test_unseen = every non-tie pair of theirs outside the unseen prompts
    unseen = set(pipe["unseen_prompts"]["caption"])
    pairs = data["pairs"]
    theirs = pairs.loc[
        pairs["user_id"].isin(held) & ~pairs["is_tie"] & ~pairs["caption"].isin(unseen)
    ]
    got = set(support["ranking_id"]) | set(ppd["test_unseen"]["ranking_id"])
    assert got == set(theirs["ranking_id"])


def test_lpp_user_model_train_carries_no_episode_label(data: dict[str, Any]) -> None:
    from prefgen.data.splits import without_episode_labels

    train, eps = data["pipe"]["train"], data["lpp"]["episodes"]
    kept = without_episode_labels(train, eps)
    cands = {
        (int(u), c) for u, cs in zip(eps["user_id"], eps["candidate_uids"], strict=True) for c in cs
    }
    touches = [
        (u, w) in cands or (u, lo) in cands
        for u, w, lo in zip(kept["user_id"], kept["image_w_uid"], kept["image_l_uid"], strict=True)
    ]
    assert not any(touches)
    # the removal is exactly the pairs that touch a candidate, nothing else
    all_touch = sum(
        (u, w) in cands or (u, lo) in cands
        for u, w, lo in zip(
            train["user_id"], train["image_w_uid"], train["image_l_uid"], strict=True
        )
    )
    assert all_touch > 0 and len(train) - len(kept) == all_touch


def test_lpp_references_are_disjoint_from_test_episodes(data: dict[str, Any]) -> None:
    lpp = data["lpp"]
    refs, eps, items = lpp["references"], lpp["episodes"], lpp["train_items"]
    n_ref = data["config"]["split"]["lpp"]["n_ref"]
    assert (refs.groupby(["user_id", "liked"]).size() == n_ref).all()
    for user, ep in eps.groupby("user_id"):
        ref_uids = set(refs.loc[refs["user_id"] == user, "image_uid"])
        ep_uids = [u for cands in ep["candidate_uids"] for u in cands]
        assert len(ep_uids) == len(set(ep_uids)), "an image is in one episode at most"
        assert not ref_uids & set(ep_uids)
        train_uids = set(items.loc[items["user_id"] == user, "image_uid"])
        assert not train_uids & (ref_uids | set(ep_uids))
    assert set(eps["kind"]) == {"1v3", "1v1"}
    assert (eps.loc[eps["kind"] == "1v3", "candidate_uids"].map(len) == 4).all()
    assert (eps.loc[eps["kind"] == "1v1", "candidate_uids"].map(len) == 2).all()


def test_lpp_liked_candidate_was_preferred_by_the_user(data: dict[str, Any]) -> None:
    pairs = data["pairs"][~data["pairs"]["is_tie"]]
    winners = set(
        zip(
            pairs["user_id"],
            np.where(
                pairs["label_0"] > pairs["label_1"], pairs["image_0_uid"], pairs["image_1_uid"]
            ),
            strict=True,
        )
    )
    for row in data["lpp"]["episodes"].itertuples():
        cands = list(row.candidate_uids)
        assert (row.user_id, cands[row.liked_index]) in winners
        assert row.caption == row.candidate_captions[row.liked_index]
        others = [c for j, c in enumerate(cands) if j != row.liked_index]
        assert not {(row.user_id, c) for c in others} & winners


def test_lpp_unseen_users_are_global_held_out_users_and_never_train(data: dict[str, Any]) -> None:
    eps = data["lpp"]["episodes"]
    unseen = set(eps.loc[eps["user_group"] == "unseen", "user_id"])
    seen = set(eps.loc[eps["user_group"] == "seen", "user_id"])
    assert unseen and seen and not unseen & seen
    assert unseen <= set(data["ppd"]["support"]["user_id"])
    assert not unseen & set(data["lpp"]["train_items"]["user_id"])
    liked = data["lpp"]["references"].groupby("user_id")["liked"].sum()
    assert set(liked.index) == unseen | seen


def test_splits_are_deterministic(data: dict[str, Any]) -> None:
    config = data["config"]
    again = split_pipe(
        data["pairs"],
        {
            "seed": config["seed"],
            "held_out": config["split"]["held_out"],
            "pipe": config["split"]["pipe"],
        },
    )
    pd.testing.assert_frame_equal(again["train"], data["pipe"]["train"])
    pd.testing.assert_frame_equal(again["test"], data["pipe"]["test"])


def test_eval_set_covers_every_type_with_shared_seeds(data: dict[str, Any]) -> None:
    config = data["config"]
    params = {"seed": config["seed"], "eval_set": config["eval_set"]}
    args = (
        data["pipe"]["train"],
        data["pipe"]["unseen_prompts"],
        data["ppd"]["train"],
        data["ppd"]["support"],
        data["users"],
        params,
    )
    es = build_eval_set(*args)
    cfg = config["eval_set"]
    assert len(es) == (cfg["seen_users"] + cfg["unseen_users"]) * cfg["prompts"]
    seen = es.loc[es["user_group"] == "seen"]
    unseen = es.loc[es["user_group"] == "unseen"]
    assert seen["user_id"].nunique() == cfg["seen_users"]
    assert unseen["user_id"].nunique() == cfg["unseen_users"]
    assert set(unseen["user_id"]) <= set(data["ppd"]["support"]["user_id"])
    assert set(seen["user_id"]) <= set(data["ppd"]["train"]["user_id"]) & set(
        data["pipe"]["train"]["user_id"]
    )
    types = data["users"].set_index("user_id")["dominant_type"]
    assert set(types[seen["user_id"].unique()]) == set(range(config["world"]["n_types"]))
    assert set(es["prompt_id"]) <= set(data["pipe"]["unseen_prompts"]["prompt_id"])
    assert es.groupby("user_id")["prompt_id"].nunique().eq(cfg["prompts"]).all()
    assert es[["user_id", "prompt_id"]].drop_duplicates().shape[0] == len(es)
    assert es["seed"].nunique() == len(es)
    pd.testing.assert_frame_equal(build_eval_set(*args), es)


def test_mini_config_meets_the_required_scale() -> None:
    """Mini is the default run: >= 500 users, >= 40,000 pairs, >= 100 unseen prompts."""
    from prefgen.core.config import load_config

    mini = load_config(REPO / "config" / "config.yaml")
    assert mini["world"]["n_users"] >= 500 and mini["world"]["n_pairs"] >= 40000
    assert mini["split"]["held_out"]["prompts"] >= 100
    assert 4 <= mini["world"]["n_types"] <= 6 and mini["world"]["image_size"] == 32


def test_a_repeat_of_a_test_pair_never_trains(data: dict[str, Any]) -> None:
    """A user who ranked the same two images twice: if one ranking is test, the other is not
    train (it would train on the test label); it is dropped and counted."""
    config = data["config"]
    pairs = data["pairs"]
    test = data["pipe"]["test"]
    first = pairs.loc[pairs["ranking_id"] == test["ranking_id"].iloc[0]].iloc[0]
    repeat = first.copy()
    repeat["ranking_id"] = int(pairs["ranking_id"].max()) + 1
    repeat["image_0_uid"], repeat["image_1_uid"] = first["image_1_uid"], first["image_0_uid"]
    repeat["label_0"], repeat["label_1"] = first["label_1"], first["label_0"]
    params = {
        "seed": config["seed"],
        "held_out": config["split"]["held_out"],
        "pipe": config["split"]["pipe"],
    }
    out = split_pipe(
        pd.concat([pairs, repeat.to_frame().T.astype(pairs.dtypes)], ignore_index=True), params
    )

    def keys(df: pd.DataFrame) -> set[tuple]:
        return {
            (u, *sorted((w, lo)))
            for u, w, lo in zip(df["user_id"], df["image_w_uid"], df["image_l_uid"], strict=True)
        }

    assert not keys(out["train"]) & keys(out["test"])
    both = {int(first["ranking_id"]), int(repeat["ranking_id"])}
    if both & set(out["test"]["ranking_id"]):
        assert out["stats"]["dropped"]["train_repeats_of_a_test_pair"] >= 1
