"""LPP baseline: episodes, prototypes, losses, top-K scoring, training round trip.

Acceptance points tested here: episodes hold exactly one liked target; prototypes are prepended
(the sequence grows by L_p) and receive gradients; L_aux is zero when the liked score leads every
disliked score by the margin and positive otherwise. Plus: scores do not depend on batch padding,
top-K counts ties as expected hits, the prototype statistics find planted structure, and a
trained variant reloads to the same scores and trains deterministically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from prefgen.cli import main as cli_main
from prefgen.core.io import load_tensors
from prefgen.data.splits import liked_items, load_pairs, split_lpp
from prefgen.lpp.data import ImageBank, episode_items, read_episodes, read_references
from prefgen.lpp.losses import aux_loss, base_loss, lpp_loss
from prefgen.lpp.lpp_evaluate import accuracy_table, episode_hits, lpp_scores, topk_hits
from prefgen.lpp.model import build_model, set_stage
from prefgen.lpp.prototypes import analyse
from prefgen.lpp.train_lpp import load_model

from tests.data_world import make_clean, make_world, smoke_config, world_params

STAND_IN: dict[str, Any] = {
    "vocab_size": 512,
    "initializer_range": 0.02,
    "vision_init": "random",
    "vision": {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "patch_size": 8,
        "image_size": 16,
    },
    "text": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}


def lpp_cfg(**over: Any) -> dict[str, Any]:
    cfg = json.loads(json.dumps(smoke_config()["lpp"]))
    cfg["vlm"]["device"] = "cpu"
    cfg.update(over)
    return cfg


def params(variant: str = "lpp", **over: Any) -> dict[str, Any]:
    cfg = lpp_cfg(**over)
    train_cfg = {k: v for k, v in cfg.items() if k not in ("evaluate", "prototypes", "variants")}
    return {"seed": 0, "variant": variant, "lpp": train_cfg, "vlm": {"stand_in": STAND_IN}}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    """Tiny models run fastest on one thread (thread hand-offs cost more than the matmuls)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The smoke world, ingested and split for LPP exactly as the rules do."""
    root = tmp_path_factory.mktemp("lpp")
    config = smoke_config()
    paths = make_world(root, world_params(config))
    clean = make_clean(root, paths["shards"])
    pairs = load_pairs(clean["pairs"])
    split = split_lpp(
        pairs,
        {
            "seed": config["seed"],
            "held_out": config["split"]["held_out"],
            "lpp": config["split"]["lpp"],
        },
    )
    out = {"root": root, "pairs": pairs, "images": clean["images"], "truth": paths["truth"]}
    for name in ("references", "episodes", "train_items"):
        out[name] = root / f"{name}.parquet"
        split[name].to_parquet(out[name], index=False)
    return out


def image(seed: int, size: int = 16) -> Any:
    from PIL import Image

    gen = np.random.default_rng(seed)
    return Image.fromarray(gen.integers(0, 256, (size, size, 3), dtype=np.uint8))


def refs(model: Any, n: int, seed: int) -> tuple[str, list[Any]]:
    caps = ["a red star on a dark blue background", "a vivid green circle on a grey background"]
    text = model.reference_text([caps[i % 2] for i in range(n)], [i % 2 == 0 for i in range(n)])
    return text, [image(seed + i) for i in range(n)]


# --- episodes ------------------------------------------------------------------------------------


def test_episodes_hold_exactly_one_liked_target(world: dict[str, Any]) -> None:
    episodes = read_episodes(world["episodes"])
    assert len(episodes) > 0 and set(episodes["kind"]) == {"1v1", "1v3"}
    liked = liked_items(world["pairs"])
    verdict = {
        (int(u), str(i)): bool(v)
        for u, i, v in zip(liked["user_id"], liked["image_uid"], liked["liked"], strict=True)
    }
    items = episode_items(episodes)
    per_episode = items.groupby("episode_id")["liked"].sum()
    assert (per_episode == 1).all()
    for row in items.itertuples():
        # the candidate marked liked is one the user chose; every other one the user rejected
        assert verdict[(row.user_id, row.image_uid)] is row.liked


def test_read_episodes_rejects_episodes_without_a_single_liked_target(
    world: dict[str, Any], tmp_path: Path
) -> None:
    episodes = pd.read_parquet(world["episodes"])
    bad = episodes.copy()
    bad.loc[0, "liked_index"] = len(bad.loc[0, "candidate_uids"])
    bad.to_parquet(tmp_path / "bad.parquet", index=False)
    with pytest.raises(ValueError, match=f"episode_id {bad.loc[0, 'episode_id']}.*liked_index"):
        read_episodes(tmp_path / "bad.parquet")
    dup = episodes.copy()
    first = list(dup.loc[0, "candidate_uids"])
    dup.at[0, "candidate_uids"] = [first[0]] * len(first)
    dup.to_parquet(tmp_path / "dup.parquet", index=False)
    with pytest.raises(ValueError, match="appears twice"):
        read_episodes(tmp_path / "dup.parquet")


# --- the model -----------------------------------------------------------------------------------


def test_prototypes_are_prepended_and_receive_gradients() -> None:
    torch.manual_seed(0)
    with_p = build_model(params("lpp"), "lpp", None)
    without = build_model(params("lpp_no_prototypes"), "lpp_no_prototypes", None)
    n_p = with_p.n_prototypes
    assert n_p == smoke_config()["lpp"]["n_prototypes"] and without.n_prototypes == 0
    text, imgs = refs(with_p, 4, 0)
    pre_p = with_p.encode_references([text], [imgs])
    pre_0 = without.encode_references([text], [imgs])
    assert pre_p.length == pre_0.length + n_p
    assert pre_p.cache.get_seq_length() == pre_0.cache.get_seq_length() + n_p
    assert bool((pre_p.mask[:, :n_p] == 1).all())

    set_stage(with_p, 1, "lora", True)
    with_p.train()
    pre = with_p.encode_references([text], [imgs])
    logits = with_p.score_targets(
        pre,
        torch.tensor([0, 0]),
        ["a red star on a dark blue background"] * 2,
        [image(100), image(101)],
    ).logits
    terms = lpp_loss(logits, torch.tensor([True, False]), torch.tensor([0, 0]), True, "hinge", 1.0)
    terms["loss"].backward()
    grad = with_p.prototypes.grad
    assert grad is not None and bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0
    # stage 2 trains the prototypes and nothing else
    assert set_stage(with_p, 2, "lora", True) == ["prototypes"]

    # the prepended prototypes are read: changing them changes the score
    with_p.eval()
    with torch.no_grad():
        before = with_p.score_targets(
            with_p.encode_references([text], [imgs]),
            torch.tensor([0]),
            ["a red star"],
            [image(100)],
        ).logits
        with_p.prototypes.add_(1.0)
        after = with_p.score_targets(
            with_p.encode_references([text], [imgs]),
            torch.tensor([0]),
            ["a red star"],
            [image(100)],
        ).logits
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("readout", ["last", "target_mean"])
@torch.no_grad()
def test_scores_do_not_depend_on_batch_padding(readout: str) -> None:
    model = build_model(params("lpp", readout=readout), "lpp", None).eval()
    short, short_imgs = refs(model, 4, 0)
    long, long_imgs = refs(model, 8, 10)
    caps = ["a red star on a dark blue background", "a pale pink cross on a beige background"]
    targets = [image(200), image(201)]
    alone = model.score_targets(
        model.encode_references([short], [short_imgs]), torch.tensor([0, 0]), caps, targets
    ).logits
    batch = model.encode_references([long, short], [long_imgs, short_imgs])
    assert int(batch.mask[1].sum()) < batch.length  # the short history is left-padded
    mixed = model.score_targets(
        batch,
        torch.tensor([1, 0, 1]),
        [caps[0], caps[0], caps[1]],
        [targets[0], targets[0], targets[1]],
    ).logits
    # another batch shape and padding: float32 attention sums in another order
    torch.testing.assert_close(mixed[[0, 2]], alone, atol=1e-5, rtol=1e-4)


# --- losses --------------------------------------------------------------------------------------


def test_aux_loss_is_zero_once_liked_leads_by_the_margin_and_positive_otherwise() -> None:
    liked = torch.tensor([True, False, False, True, False])
    user = torch.tensor([0, 0, 0, 1, 1])
    margin = 1.0
    # M+ of liked targets exceeds every disliked M+ of the same user by >= margin, and M- of
    # disliked targets exceeds every liked M- by >= margin
    good = torch.tensor([[3.0, -1.0], [1.5, 0.5], [2.0, 0.0], [0.0, -2.0], [-1.0, -0.5]])
    l_plus, l_minus = aux_loss(good, liked, user, "hinge", margin)
    assert float(l_plus) == 0.0 and float(l_minus) == 0.0
    # one pair inside the margin (user 0: liked M+ 3.0 vs disliked 2.5) -> positive
    close = good.clone()
    close[2, 0] = 2.5
    l_plus, l_minus = aux_loss(close, liked, user, "hinge", margin)
    assert float(l_plus) > 0 and float(l_minus) == 0.0
    # a disliked target ranked above the liked one -> both terms positive
    wrong = good.clone()
    wrong[4] = torch.tensor([1.0, -3.0])
    l_plus, l_minus = aux_loss(wrong, liked, user, "hinge", margin)
    assert float(l_plus) > 0 and float(l_minus) > 0
    # pairs only form within a user: user 1's liked vs user 0's disliked never count
    cross = good.clone()
    cross[1, 0] = 10.0  # user 0's disliked target with a huge M+; user 1's liked has M+ 0
    l_plus, _ = aux_loss(cross, liked, user, "hinge", margin)
    assert float(l_plus) > 0
    assert float(aux_loss(cross[3:], liked[3:], user[3:], "hinge", margin)[0]) == 0.0
    # LPP's logistic form: positive always, smaller when the ranking is right
    lg_good = sum(aux_loss(good, liked, user, "logistic", margin))
    lg_wrong = sum(aux_loss(wrong, liked, user, "logistic", margin))
    assert 0 < float(lg_good) < float(lg_wrong)


def test_base_loss_averages_the_two_classes() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    liked = torch.tensor([True, False, False])
    ce_like = -torch.log_softmax(logits[0], 0)[0]
    ce_dis = -(torch.log_softmax(logits[1], 0)[1] + torch.log_softmax(logits[2], 0)[1]) / 2
    # the loss's vectorised form vs this hand-written one: float32 summation order only
    torch.testing.assert_close(
        base_loss(logits, liked), (ce_like + ce_dis) / 2, rtol=1e-6, atol=1e-6
    )
    terms = lpp_loss(logits, liked, torch.zeros(3, dtype=torch.long), False, "hinge", 1.0)
    # lpp_no_aux: L_all is L_base itself, not another computation of it
    torch.testing.assert_close(terms["loss"], terms["base"], rtol=0, atol=0)


# --- evaluation ----------------------------------------------------------------------------------


def test_topk_counts_ties_as_expected_hits() -> None:
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # liked first, clear win
            [0.5, 0.5, 0.1, 0.0],  # tied with one other at the top
            [0.1, 0.2, 0.3, 0.4],  # liked last
            [0.3, 0.3, 0.3, 0.3],
        ]
    )  # all tied
    liked = np.zeros(4, dtype=int)
    np.testing.assert_allclose(topk_hits(scores, liked, 1), [1.0, 0.5, 0.0, 0.25])
    np.testing.assert_allclose(topk_hits(scores, liked, 2), [1.0, 1.0, 0.0, 0.5])


def test_accuracy_table_has_groups_gap_and_intervals() -> None:
    gen = np.random.default_rng(0)
    episodes = pd.DataFrame(
        {
            "episode_id": np.arange(40),
            "user_id": np.repeat(np.arange(20), 2),
            "user_group": np.repeat(["seen"] * 14 + ["unseen"] * 6, 2),
            "kind": "1v1",
        }
    )
    hits = episodes.assign(method="m", top1=(gen.random(40) < 0.8).astype(float), top2=np.nan)
    table = accuracy_table(hits, ["m"], 200, 0.95, 0)
    assert list(table["users"]) == ["seen", "unseen", "all", "seen_minus_unseen"]
    est = table.set_index("users")["accuracy"]
    assert est["seen_minus_unseen"] == pytest.approx(est["seen"] - est["unseen"])
    assert (table["ci_low"] <= table["accuracy"]).all()
    assert (table["accuracy"] <= table["ci_high"]).all()


def test_prototype_statistics_find_planted_structure() -> None:
    gen = np.random.default_rng(0)
    types = np.repeat(np.arange(3), 6)
    centres = gen.dirichlet(np.ones(8), size=3)
    planted = centres[types][:, None, None, :] + 0.02 * gen.random((18, 4, 2, 8))
    summary, patterns, _, _ = analyse(planted * 0.1, types, 200, 0)
    assert summary["same_type_similarity"] > summary["different_type_similarity"]
    assert summary["permutation_p"] < 0.01
    assert summary["attention_mass"] == pytest.approx(float((planted * 0.1).sum(-1).mean()))
    noise = gen.random((18, 4, 2, 8))
    assert analyse(noise, types, 200, 0)[0]["permutation_p"] > 0.01


def test_trained_variant_reloads_to_the_same_scores_and_is_deterministic(
    world: dict[str, Any], tmp_path: Path
) -> None:
    p = params(
        "lpp",
        stage1={"steps": 2, "lr": 1e-3},
        stage2={"steps": 1, "lr": 1e-2},
        batch_users=2,
        targets_per_class=1,
    )
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        code = cli_main(
            [
                "train-lpp",
                "--params",
                json.dumps(p),
                "--references",
                str(world["references"]),
                "--train-items",
                str(world["train_items"]),
                "--images",
                str(world["images"]),
                "--out",
                str(out),
                "--threads",
                "1",
            ]
        )
        assert code == 0
    first_state, second_state = (load_tensors(out / "model.safetensors") for out in outs)
    assert first_state.keys() == second_state.keys() and "prototypes" in first_state
    for name, value in first_state.items():  # the same run twice in one process: exact
        assert torch.equal(value, second_state[name]), name
    log = pd.read_csv(outs[0] / "train_log.csv")
    assert list(log["stage"]) == [1, 1, 2] and np.isfinite(log["loss"]).all()

    model, meta = load_model(outs[0])
    assert meta["variant"] == "lpp" and model.stand_in
    episodes = read_episodes(world["episodes"])
    episodes = episodes[episodes["user_id"].isin(episodes["user_id"].unique()[:3])]
    items = episode_items(episodes.reset_index(drop=True))
    references = read_references(world["references"])
    references = references[references["user_id"].isin(items["user_id"])]
    bank = ImageBank(world["images"], set(items["image_uid"]) | set(references["image_uid"]))
    first = lpp_scores(model, references, items, bank, batch_users=2, seed=0)
    again = lpp_scores(load_model(outs[1])[0], references, items, bank, batch_users=3, seed=0)
    # reloaded weights and another batch size (3 users, not 2): the same scores up to the
    # float32 summation order of other batch shapes (scores are probabilities in (0, 1))
    np.testing.assert_allclose(first, again, rtol=0, atol=1e-5)
    assert ((first > 0) & (first < 1)).all()
    hits = episode_hits(episodes.reset_index(drop=True), items, {"lpp": first})
    assert len(hits) == len(episodes)
