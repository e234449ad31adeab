"""``prefgen split-pipe | split-ppd | split-lpp``: the three papers' re-splits of the pairs.

All three read ``data/clean/pairs.parquet`` and share two hold-outs, computed by the same
functions from the same config keys (``split.held_out``), so "unseen" means one thing
everywhere:
- unseen prompts (``held_out_prompts``): the least-used captions; every pair with one of them is
  removed from every split, so generation is evaluated on prompts no model trained on;
- held-out users (``held_out_users``): a share of the users with enough pairs; they are PPD's
  ``test_unseen`` users and LPP's unseen users. Their pairs are in no training split: each gets
  one support set of ``support_pairs`` non-tie pairs (``splits/ppd/support.parquet``), the only
  pairs of theirs any method sees (PPD's few shots, PIPE's λ with φ frozen, Premier's stage 2),
  and the rest are ``test_unseen``.

Split tables share the columns ``SPLIT_COLUMNS`` (w = preferred image). A tie kept for training
gets a random winner and keeps ``is_tie = True``, so a consumer can still drop it.

- PIPE §4: held-out users removed; per user, ``round(test_fraction * non-tie pairs)`` of the
  user's non-tie pairs go to test, everything else (ties included) to train.
- PPD §5: users with fewer than ``min_pairs`` non-tie pairs dropped; held-out users ->
  ``support`` (their support set) and ``test_unseen`` (the rest); the remaining (seen) users'
  pairs on held-out captions -> ``test_seen``, the rest -> ``train``/``val``. Ties are kept
  (random winner) only in train.
- LPP §4: per user, liked images = images the user preferred at least once, disliked = images
  the user only ever rejected; users with >= ``min_liked`` liked images; ``n_ref`` reference
  likes and dislikes, 1-vs-3 and 1-vs-1 test episodes on other images, training items from the
  rest (seen users only). The user models LPP is compared with are refitted on
  ``user_model_train``: PIPE train without any pair that carries the label of an episode
  candidate (:func:`without_episode_labels`).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prefgen.core.config import ConfigError, InputError
from prefgen.core.io import write_json, write_parquet
from prefgen.core.logging import get_logger
from prefgen.core.seeding import rng

log = get_logger(__name__)

SPLIT_COLUMNS = [
    "ranking_id",
    "user_id",
    "caption",
    "prompt_id",
    "image_w_uid",
    "image_l_uid",
    "is_tie",
]


def prompt_id(caption: str) -> int:
    """A stable int64 id of a caption (a hash), the same in every stage and every dataset."""
    return int.from_bytes(hashlib.sha256(caption.encode()).digest()[:8], "little") >> 1


def prompt_ids(captions: pd.Series) -> pd.Series:
    uniq = pd.unique(captions)
    table = {c: prompt_id(c) for c in uniq}
    return captions.map(table).astype(np.int64)


def load_pairs(path: str | Path) -> pd.DataFrame:
    """The clean pairs (``ingest`` output) with a ``prompt_id`` column, in ranking_id order."""
    df = pd.read_parquet(path)
    missing = {
        "ranking_id",
        "user_id",
        "caption",
        "image_0_uid",
        "image_1_uid",
        "label_0",
        "label_1",
        "is_tie",
    } - set(df.columns)
    if missing:
        raise InputError(
            f"{path}: missing column(s) {sorted(missing)} (expected ingest's pairs.parquet)"
        )
    df = df.sort_values("ranking_id", kind="stable").reset_index(drop=True)
    df["prompt_id"] = prompt_ids(df["caption"])
    return df


# --- shared hold-outs -----------------------------------------------------------------------
def held_out_prompts(pairs: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """The ``n`` least-used captions (random order among equally used ones).

    Their pairs are removed from every split. Taking the rarest keeps the data loss small; in
    the synthetic world caption popularity is random, so rare captions are ordinary captions.
    """
    counts = pairs.groupby("caption", sort=True).size()
    if n >= len(counts):
        raise ConfigError(
            f"split.held_out.prompts={n}: the pairs have only {len(counts)} distinct "
            "captions; hold out fewer"
        )
    key = rng(seed, "split", "held_out_prompts").random(len(counts))
    order = np.lexsort((key, counts.to_numpy()))
    chosen = counts.index.to_numpy()[order[:n]]
    out = pd.DataFrame(
        {
            "prompt_id": [prompt_id(c) for c in chosen],
            "caption": chosen,
            "n_pairs_removed": counts.loc[chosen].to_numpy().astype(np.int64),
        }
    )
    return out.sort_values("prompt_id", kind="stable").reset_index(drop=True)


def without_prompts(pairs: pd.DataFrame, prompts: pd.DataFrame) -> pd.DataFrame:
    return pairs[~pairs["caption"].isin(set(prompts["caption"]))].reset_index(drop=True)


def nontie_counts(pairs: pd.DataFrame) -> pd.Series:
    return pairs.loc[~pairs["is_tie"]].groupby("user_id").size()


def held_out_users(pairs: pd.DataFrame, fraction: float, min_pairs: int, seed: int) -> np.ndarray:
    """A random ``fraction`` of the users with >= ``min_pairs`` non-tie pairs (sorted ids).

    ``pairs`` must already be without the unseen prompts, so every split calling this with the
    same config gets the same users.
    """
    counts = nontie_counts(pairs)
    eligible = np.sort(counts[counts >= min_pairs].index.to_numpy())
    k = int(round(fraction * len(eligible)))
    pick = rng(seed, "split", "held_out_users").permutation(len(eligible))[:k]
    return np.sort(eligible[pick])


def to_split_rows(pairs: pd.DataFrame, gen: np.random.Generator) -> pd.DataFrame:
    """Pairs -> split columns; a tie gets a random winner (and keeps is_tie=True)."""
    win0 = pairs["label_0"].to_numpy() > pairs["label_1"].to_numpy()
    ties = pairs["is_tie"].to_numpy()
    coin = gen.random(len(pairs)) < 0.5
    win0 = np.where(ties, coin, win0)
    i0, i1 = pairs["image_0_uid"].to_numpy(), pairs["image_1_uid"].to_numpy()
    return pd.DataFrame(
        {
            "ranking_id": pairs["ranking_id"].to_numpy(np.int64),
            "user_id": pairs["user_id"].to_numpy(np.int64),
            "caption": pairs["caption"].to_numpy(),
            "prompt_id": pairs["prompt_id"].to_numpy(np.int64),
            "image_w_uid": np.where(win0, i0, i1),
            "image_l_uid": np.where(win0, i1, i0),
            "is_tie": ties,
        }
    )


def per_user_quota(pairs: pd.DataFrame, quota: pd.Series, gen: np.random.Generator) -> np.ndarray:
    """Boolean mask picking ``quota[user]`` random rows of each user among ``pairs``."""
    key = gen.random(len(pairs))
    rank = (
        pd.DataFrame({"u": pairs["user_id"].to_numpy(), "k": key})
        .groupby("u")["k"]
        .rank(method="first")
        .to_numpy()
        - 1
    )
    q = pairs["user_id"].map(quota).fillna(0).to_numpy()
    return rank < q


def unordered_pair_key(pairs: pd.DataFrame) -> pd.Series:
    """``user|image|image`` with the two images sorted: the same labelled pair in any order."""
    a, b = pairs["image_0_uid"].astype(str), pairs["image_1_uid"].astype(str)
    lo, hi = a.where(a < b, b), b.where(a < b, a)
    return pairs["user_id"].astype(str) + "|" + lo + "|" + hi


def support_mask(pairs: pd.DataFrame, n: int, seed: int) -> np.ndarray:
    """Boolean mask of each user's support set: ``n`` of their pairs, in a per-user seeded draw.

    Seeded per user (not by row position), so adding or removing another user never changes a
    user's support set.
    """
    mask = np.zeros(len(pairs), dtype=bool)
    for user, rows in pairs.groupby("user_id", sort=True).indices.items():
        order = np.sort(rows)[rng(seed, "split", "support", int(user)).permutation(len(rows))]
        mask[order[:n]] = True
    return mask


# --- PIPE -----------------------------------------------------------------------------------
def split_pipe(pairs: pd.DataFrame, params: dict[str, Any]) -> dict[str, Any]:
    seed = int(params["seed"])
    ho = params["held_out"]
    frac = float(params["pipe"]["test_fraction"])
    unseen = held_out_prompts(pairs, int(ho["prompts"]), seed)
    rest = without_prompts(pairs, unseen)
    # held-out users are unseen to every method: none of their pairs is PIPE train or test
    held = held_out_users(rest, float(ho["user_fraction"]), int(ho["min_pairs"]), seed)
    in_held = rest["user_id"].isin(set(held.tolist())).to_numpy()
    n_held_pairs = int(in_held.sum())
    rest = rest.loc[~in_held].reset_index(drop=True)
    gen = rng(seed, "split", "pipe")
    nontie = rest.loc[~rest["is_tie"]]
    n_nontie = nontie.groupby("user_id").size()
    quota = np.floor(frac * n_nontie + 0.5).astype(np.int64)
    test_mask_nontie = per_user_quota(nontie, quota, gen)
    test_ids = set(nontie.loc[test_mask_nontie, "ranking_id"])
    is_test = rest["ranking_id"].isin(test_ids).to_numpy()
    # a user who ranked the same two images again: that repeat must not train on a test label
    key = unordered_pair_key(rest)
    repeat_of_test = ~is_test & key.isin(set(key[is_test])).to_numpy()
    train = to_split_rows(rest.loc[~is_test & ~repeat_of_test], gen)
    test = to_split_rows(rest.loc[is_test], gen)
    _refuse_empty(
        "split_pipe",
        {"train": train, "test": test},
        "split.pipe.test_fraction (rounded per user), split.held_out.prompts and "
        "split.held_out.user_fraction",
    )
    per_user_test = test.groupby("user_id").size().reindex(n_nontie.index, fill_value=0)
    stats = {
        "users": int(rest["user_id"].nunique()),
        "train": _split_stats(train),
        "test": _split_stats(test),
        "unseen_prompts": len(unseen),
        "held_out_users": len(held),
        "dropped": {
            "pairs_with_unseen_prompts": int(len(pairs) - len(rest) - n_held_pairs),
            "pairs_of_held_out_users": n_held_pairs,
            "train_repeats_of_a_test_pair": int(repeat_of_test.sum()),
            "ties_from_test": "none: ties are never drawn for test; all "
            f"{int(rest['is_tie'].sum())} ties are in train with a random winner",
        },
        "users_without_test_pairs": int((per_user_test == 0).sum()),
        "users_with_only_ties": int(rest["user_id"].nunique() - len(n_nontie)),
        "max_abs_test_share_error_pairs": float(np.max(np.abs(per_user_test - frac * n_nontie)))
        if len(n_nontie)
        else 0.0,
        "test_share_definition": f"per user, round({frac} x the user's non-tie pairs)",
    }
    return {
        "train": train,
        "test": test,
        "unseen_prompts": unseen[["prompt_id", "caption"]],
        "stats": stats,
    }


def _refuse_empty(stage: str, parts: dict[str, pd.DataFrame], keys: str) -> None:
    """A split the config leaves with no rows is an error naming it, never an empty file that
    a later stage would train or score on."""
    empty = [name for name, df in parts.items() if len(df) == 0]
    if empty:
        raise ConfigError(
            f"{stage}: the config leaves split(s) {empty} with no pairs; check "
            f"{keys} against the data"
        )


def _split_stats(df: pd.DataFrame) -> dict[str, int]:
    return {
        "users": int(df["user_id"].nunique()),
        "pairs": len(df),
        "ties": int(df["is_tie"].sum()),
        "prompts": int(df["prompt_id"].nunique()),
    }


# --- PPD ------------------------------------------------------------------------------------
def split_ppd(pairs: pd.DataFrame, params: dict[str, Any]) -> dict[str, Any]:
    seed = int(params["seed"])
    ho = params["held_out"]
    cfg = params["ppd"]
    min_pairs = int(ho["min_pairs"])
    unseen_prompts = held_out_prompts(pairs, int(ho["prompts"]), seed)
    rest = without_prompts(pairs, unseen_prompts)
    counts = nontie_counts(rest).reindex(rest["user_id"].unique(), fill_value=0)
    small = set(counts[counts < min_pairs].index)
    unseen_users = set(held_out_users(rest, float(ho["user_fraction"]), min_pairs, seed).tolist())
    gen = rng(seed, "split", "ppd")

    in_small = rest["user_id"].isin(small).to_numpy()
    in_unseen = rest["user_id"].isin(unseen_users).to_numpy()
    ties = rest["is_tie"].to_numpy()
    held_nontie = rest.loc[in_unseen & ~ties]
    is_support = support_mask(held_nontie, int(ho["support_pairs"]), seed)
    support = held_nontie.loc[is_support]
    test_unseen = held_nontie.loc[~is_support]
    seen = rest.loc[~in_small & ~in_unseen]

    captions = np.sort(seen["caption"].unique())
    n_test_caps = int(round(float(cfg["test_caption_fraction"]) * len(captions)))
    test_caps = set(captions[gen.permutation(len(captions))[:n_test_caps]])
    on_test_cap = seen["caption"].isin(test_caps).to_numpy()
    test_seen = seen.loc[on_test_cap & ~seen["is_tie"].to_numpy()]
    train_val = seen.loc[~on_test_cap]
    nontie_tv = train_val.loc[~train_val["is_tie"]]
    val_key = gen.random(len(nontie_tv))
    n_val = int(round(float(cfg["val_fraction"]) * len(nontie_tv)))
    val_ids = set(nontie_tv["ranking_id"].to_numpy()[np.argsort(val_key, kind="stable")[:n_val]])
    is_val = train_val["ranking_id"].isin(val_ids).to_numpy()
    val = train_val.loc[is_val]
    train = train_val.loc[~is_val]
    # a seen user is tested only if PPD can condition on min_pairs of their training pairs
    train_counts = nontie_counts(train)
    testable = set(train_counts[train_counts >= min_pairs].index)
    ok = test_seen["user_id"].isin(testable).to_numpy()
    dropped_test_seen = int((~ok).sum())
    test_seen = test_seen.loc[ok]

    _refuse_empty(
        "split_ppd",
        {"train": train, "test_seen": test_seen},
        f"split.ppd.test_caption_fraction, split.held_out.min_pairs={min_pairs} and "
        "split.held_out.user_fraction",
    )
    out = {
        "train": to_split_rows(train, gen),
        "val": to_split_rows(val, gen),
        "test_seen": to_split_rows(test_seen, gen),
        "test_unseen": to_split_rows(test_unseen, gen),
        "support": to_split_rows(support, gen),
    }
    stats = {name: _split_stats(df) for name, df in out.items()}
    stats.update(
        {
            "users_kept": int(len(counts) - len(small)),
            "held_out_users": len(unseen_users),
            "support_pairs_per_held_out_user": int(ho["support_pairs"]),
            "held_out_captions": n_test_caps,
            "dropped": {
                "pairs_with_unseen_prompts": int(len(pairs) - len(rest)),
                f"users_with_fewer_than_{min_pairs}_nontie_pairs": len(small),
                f"pairs_of_users_with_fewer_than_{min_pairs}_nontie_pairs": int(in_small.sum()),
                "ties_of_unseen_users": int((in_unseen & ties).sum()),
                "ties_on_held_out_captions": int((on_test_cap & seen["is_tie"].to_numpy()).sum()),
                f"test_seen_pairs_of_users_with_fewer_than_{min_pairs}_train_pairs": (
                    dropped_test_seen
                ),
            },
        }
    )
    return {**out, "stats": stats}


# --- LPP ------------------------------------------------------------------------------------
def liked_items(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per (user, image): liked if the user preferred it at least once, disliked if never.

    This is the Pick-a-Pic reading LPP uses: a chosen image is a like, an image the user only
    ever rejected is a dislike. (In a session the preferred image stays and may lose later; it
    was still chosen over another image, so it counts as liked.)
    """
    nt = pairs.loc[~pairs["is_tie"]]
    w0 = nt["label_0"].to_numpy() > nt["label_1"].to_numpy()
    win = np.where(w0, nt["image_0_uid"], nt["image_1_uid"])
    lose = np.where(w0, nt["image_1_uid"], nt["image_0_uid"])
    items = pd.DataFrame(
        {
            "user_id": np.concatenate([nt["user_id"].to_numpy()] * 2),
            "image_uid": np.concatenate([win, lose]),
            "caption": np.concatenate([nt["caption"].to_numpy()] * 2),
            "won": np.concatenate([np.ones(len(nt), int), np.zeros(len(nt), int)]),
        }
    )
    agg = (
        items.groupby(["user_id", "image_uid"], sort=True)
        .agg(caption=("caption", "first"), won=("won", "sum"))
        .reset_index()
    )
    agg["liked"] = agg["won"] > 0
    return agg


def split_lpp(pairs: pd.DataFrame, params: dict[str, Any]) -> dict[str, Any]:
    seed = int(params["seed"])
    ho = params["held_out"]
    cfg = params["lpp"]
    n_ref, min_liked = int(cfg["n_ref"]), int(cfg["min_liked"])
    n13, n11 = int(cfg["episodes_1v3"]), int(cfg["episodes_1v1"])
    if min_liked < n_ref + 1:
        raise ValueError(
            f"split.lpp.min_liked={min_liked} must exceed n_ref={n_ref}: each user "
            "needs a liked image outside the references to be tested"
        )
    unseen_prompts = held_out_prompts(pairs, int(ho["prompts"]), seed)
    rest = without_prompts(pairs, unseen_prompts)
    unseen_users = set(
        held_out_users(rest, float(ho["user_fraction"]), int(ho["min_pairs"]), seed).tolist()
    )
    clear = liked_items(rest)
    n_liked = clear.loc[clear["liked"]].groupby("user_id").size()
    eligible = np.sort(n_liked[n_liked >= min_liked].index.to_numpy())

    refs, episodes, train_items = [], [], []
    too_few_dislikes = 0
    pool = clear.loc[clear["user_id"].isin(eligible)]
    for user, mine in pool.groupby("user_id", sort=True):
        user = int(user)
        group = "unseen" if user in unseen_users else "seen"
        ug = rng(seed, "split", "lpp", user)
        is_liked = mine["liked"].to_numpy()
        uids, caps = mine["image_uid"].to_numpy(), mine["caption"].to_numpy()
        lk = np.flatnonzero(is_liked)[ug.permutation(int(is_liked.sum()))]
        dk = np.flatnonzero(~is_liked)[ug.permutation(int((~is_liked).sum()))]
        n_test_likes = min(n13 + n11, len(lk) - n_ref)
        e13 = min(n13, n_test_likes)
        e11 = n_test_likes - e13
        if len(dk) < n_ref + 3 * e13 + e11:
            too_few_dislikes += 1
            continue
        for slot in range(n_ref):
            refs.append((user, slot, uids[lk[slot]], caps[lk[slot]], True))
            refs.append((user, slot, uids[dk[slot]], caps[dk[slot]], False))
        li, di = n_ref, n_ref
        for kind, count, n_neg in (("1v3", e13, 3), ("1v1", e11, 1)):
            for _ in range(count):
                cands = [lk[li], *dk[di : di + n_neg]]
                li, di = li + 1, di + n_neg
                order = ug.permutation(len(cands))
                episodes.append(
                    {
                        "user_id": user,
                        "user_group": group,
                        "kind": kind,
                        "caption": caps[cands[0]],
                        "candidate_uids": [uids[cands[j]] for j in order],
                        "candidate_captions": [caps[cands[j]] for j in order],
                        "liked_index": int(np.flatnonzero(order == 0)[0]),
                    }
                )
        if group == "seen":
            for idx, liked in ((lk[li:], True), (dk[di:], False)):
                train_items.extend((user, uids[j], caps[j], liked) for j in idx)

    references = pd.DataFrame(refs, columns=["user_id", "slot", "image_uid", "caption", "liked"])
    eps = pd.DataFrame(
        episodes,
        columns=[
            "user_id",
            "user_group",
            "kind",
            "caption",
            "candidate_uids",
            "candidate_captions",
            "liked_index",
        ],
    )
    eps.insert(0, "episode_id", np.arange(len(eps), dtype=np.int64))
    train_df = pd.DataFrame(train_items, columns=["user_id", "image_uid", "caption", "liked"])
    for df in (references, eps, train_df):
        df["user_id"] = df["user_id"].astype(np.int64)
    users_with_eps = set(eps["user_id"])
    stats = {
        "users": len(users_with_eps),
        "seen_users": int(eps.loc[eps["user_group"] == "seen", "user_id"].nunique()),
        "unseen_users": int(eps.loc[eps["user_group"] == "unseen", "user_id"].nunique()),
        "references": {"rows": len(references), "n_ref": n_ref},
        "episodes": {
            f"{g}_{k}": int(((eps["user_group"] == g) & (eps["kind"] == k)).sum())
            for g in ("seen", "unseen")
            for k in ("1v3", "1v1")
        },
        "train_items": {
            "rows": len(train_df),
            "liked": int(train_df["liked"].sum()),
            "users": int(train_df["user_id"].nunique()),
        },
        "dropped": {
            "pairs_with_unseen_prompts": int(len(pairs) - len(rest)),
            "ties": int(rest["is_tie"].sum()),
            f"users_with_fewer_than_{min_liked}_liked_images": int(
                rest["user_id"].nunique() - len(eligible)
            ),
            "users_with_too_few_disliked_images": too_few_dislikes,
        },
    }
    return {"references": references, "episodes": eps, "train_items": train_df, "stats": stats}


def without_episode_labels(train: pd.DataFrame, episodes: pd.DataFrame) -> pd.DataFrame:
    """``train`` without every pair of an episode's user that involves one of its candidates.

    An episode asks which candidate the user liked; a pair of that user with a candidate carries
    part of that label (the candidate won or lost it). The user models compared with LPP are
    fitted on what is left, so none of them trained on an episode's answer.
    """
    touches = involves_items(train, "image_w_uid", "image_l_uid", episode_candidates(episodes))
    return train.loc[~touches].reset_index(drop=True)


def episode_candidates(episodes: pd.DataFrame) -> set[tuple[int, str]]:
    """Every (user, candidate image) of the LPP episodes."""
    cands = episodes[["user_id", "candidate_uids"]].explode("candidate_uids")
    return set(
        zip(
            cands["user_id"].astype(np.int64).tolist(),
            cands["candidate_uids"].astype(str),
            strict=True,
        )
    )


def involves_items(pairs: pd.DataFrame, a: str, b: str, items: set[tuple[int, str]]) -> np.ndarray:
    """Boolean mask of the pairs whose user has image ``a`` or ``b`` among ``items``."""
    users = pairs["user_id"].to_numpy(np.int64).tolist()
    return np.fromiter(
        (
            (u, str(x)) in items or (u, str(y)) in items
            for u, x, y in zip(users, pairs[a], pairs[b], strict=True)
        ),
        dtype=bool,
        count=len(pairs),
    )


# --- CLI ------------------------------------------------------------------------------------
OUTPUTS = {
    "split-pipe": ("train", "test", "unseen_prompts"),
    "split-ppd": ("train", "val", "test_seen", "test_unseen", "support"),
    "split-lpp": ("references", "episodes", "train_items", "user_model_train"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", required=True, help="data/clean/pairs.parquet")
    parser.add_argument("--out", required=True, help="output directory of this split")
    parser.add_argument(
        "--pipe-train",
        default=None,
        help="split-lpp: splits/pipe/train.parquet, to write user_model_train.parquet from",
    )


def run(args: argparse.Namespace) -> None:
    pairs = load_pairs(args.pairs)
    fn = {"split-pipe": split_pipe, "split-ppd": split_ppd, "split-lpp": split_lpp}[args._command]
    result = fn(pairs, args.params)
    if args._command == "split-lpp":
        if not args.pipe_train:
            raise ValueError("split-lpp: --pipe-train is required (the LPP user-model train set)")
        pipe_train = pd.read_parquet(args.pipe_train)
        result["user_model_train"] = without_episode_labels(pipe_train, result["episodes"])
        result["stats"]["user_model_train"] = {
            "pairs": len(result["user_model_train"]),
            "removed_pairs_with_an_episode_candidate": len(pipe_train)
            - len(result["user_model_train"]),
        }
    out = Path(args.out)
    for name in OUTPUTS[args._command]:
        write_parquet(result[name], out / f"{name}.parquet")
    write_json(result["stats"], out / "stats.json")
    log.info("%s: %s", args._command, result["stats"])


__all__ = [
    "held_out_prompts",
    "held_out_users",
    "prompt_id",
    "split_lpp",
    "split_pipe",
    "split_ppd",
    "episode_candidates",
    "involves_items",
    "support_mask",
    "without_episode_labels",
]
