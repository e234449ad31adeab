"""``prefgen eval-set``: the users x unseen prompts every generation method samples, with seeds.

Win rates compare methods on the same (user, prompt, seed) triples, so the set is fixed once,
here, and every method's sampler reads it. Seen users are users every adapter method trained
on (in PIPE's and PPD's training splits, with at least ``min_train_pairs`` PIPE training pairs);
unseen users are the global held-out users with a support set (``splits/ppd/support.parquet``,
the only pairs of theirs any method sees). When the synthetic
world's truth exists, users are picked round-robin over their dominant planted type, so every
type is represented; with real data they are a seeded random draw. Prompts are a seeded draw
from the unseen prompts (no pair in any split uses them). Each row's seed is a hash of the
master seed, user and prompt: the same in every method and independent of row order.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import pandas as pd

from prefgen.core.io import write_parquet
from prefgen.core.logging import get_logger
from prefgen.core.seeding import derive_seed, rng

log = get_logger(__name__)


def stratified_pick(
    users: np.ndarray, n: int, types: pd.Series | None, gen: np.random.Generator
) -> np.ndarray:
    """``n`` users, round-robin over ``types[user]`` (shuffled within each type), or at random."""
    users = np.sort(np.asarray(users, dtype=np.int64))
    if n > len(users):
        raise ValueError(f"eval_set: asked for {n} users but only {len(users)} qualify")
    if types is None:
        return np.sort(users[gen.permutation(len(users))[:n]])
    by_type = {
        int(t): list(users[types.reindex(users).to_numpy() == t])
        for t in np.unique(types.reindex(users).to_numpy())
    }
    for t in by_type:
        by_type[t] = [by_type[t][i] for i in gen.permutation(len(by_type[t]))]
    picked: list[int] = []
    while len(picked) < n:
        for t in sorted(by_type):
            if by_type[t] and len(picked) < n:
                picked.append(int(by_type[t].pop(0)))
    return np.sort(np.array(picked, dtype=np.int64))


def build_eval_set(
    pipe_train: pd.DataFrame,
    unseen_prompts: pd.DataFrame,
    ppd_train: pd.DataFrame,
    support: pd.DataFrame,
    truth_users: pd.DataFrame | None,
    params: dict[str, Any],
) -> pd.DataFrame:
    seed = int(params["seed"])
    cfg = params["eval_set"]
    gen = rng(seed, "eval_set")
    types = None if truth_users is None else truth_users.set_index("user_id")["dominant_type"]
    counts = pipe_train.groupby("user_id").size()
    unseen_pool = np.unique(support["user_id"])
    seen_pool = np.intersect1d(
        counts[counts >= int(cfg["min_train_pairs"])].index.to_numpy(),
        np.unique(ppd_train["user_id"]),
    )
    seen_pool = np.setdiff1d(seen_pool, unseen_pool)
    seen = stratified_pick(seen_pool, int(cfg["seen_users"]), types, gen)
    unseen = stratified_pick(unseen_pool, int(cfg["unseen_users"]), types, gen)
    n_prompts = int(cfg["prompts"])
    if n_prompts > len(unseen_prompts):
        raise ValueError(
            f"eval_set.prompts={n_prompts}: only {len(unseen_prompts)} unseen prompts "
            "(split.held_out.prompts)"
        )
    prompts = unseen_prompts.sort_values("prompt_id", kind="stable").iloc[
        np.sort(gen.permutation(len(unseen_prompts))[:n_prompts])
    ]
    rows = []
    for group, users in (("seen", seen), ("unseen", unseen)):
        for u in users:
            for pid, cap in zip(prompts["prompt_id"], prompts["caption"], strict=True):
                rows.append(
                    {
                        "user_id": int(u),
                        "user_group": group,
                        "prompt_id": int(pid),
                        "caption": cap,
                        "seed": derive_seed(seed, "eval_set", int(u), int(pid)) % 2**31,
                        "dominant_type": int(types.get(u, -1)) if types is not None else -1,
                    }
                )
    out = pd.DataFrame(rows)
    out["user_id"] = out["user_id"].astype(np.int64)
    out["prompt_id"] = out["prompt_id"].astype(np.int64)
    out["seed"] = out["seed"].astype(np.int64)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipe-train", required=True)
    parser.add_argument("--unseen-prompts", required=True)
    parser.add_argument("--ppd-train", required=True)
    parser.add_argument("--support", required=True, help="splits/ppd/support.parquet")
    parser.add_argument("--truth-users", default=None, help="the world's users.parquet (optional)")
    parser.add_argument("--out", required=True)


def run(args: argparse.Namespace) -> None:
    truth = pd.read_parquet(args.truth_users) if args.truth_users else None
    out = build_eval_set(
        pd.read_parquet(args.pipe_train),
        pd.read_parquet(args.unseen_prompts),
        pd.read_parquet(args.ppd_train),
        pd.read_parquet(args.support),
        truth,
        args.params,
    )
    write_parquet(out, args.out)
    log.info(
        "eval_set: %d rows: %s users x %d prompts; dominant types %s",
        len(out),
        out.groupby("user_group")["user_id"].nunique().to_dict(),
        out["prompt_id"].nunique(),
        out.drop_duplicates("user_id")["dominant_type"].value_counts().sort_index().to_dict(),
    )
