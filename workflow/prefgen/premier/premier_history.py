"""``premier-history``: Premier's Fig. 6/7 comparison of new-user parameterisations.

On held-out users (``splits/ppd/test_unseen``) with enough likes, at the last Premier
checkpoint, for history lengths ``h`` (2, 4, 8, 16): fit (a) combination weights over the
training users' embeddings (Premier §4.3) and (b) a free embedding from scratch (initialised as
in stage 1) on the first ``h`` liked images. Both arms and all ``h`` are fitted in one loop as
independent rows (Adam is per-coordinate and each row only sees its own images, so this equals
separate fits at a fraction of the cost). Metrics per user: the denoising loss on ``heldout``
liked images never used for fitting, subtracted from the base model's (higher = the embedding
explains the user's taste better; identical noise for every arm), and, when the synthetic
world's truth is given, the oracle reward of images sampled for the user on evaluation prompts
minus the base model's (same seeds). ``tables/premier_history`` reports each arm and the paired
difference (combination − free) with two-way bootstrap CIs (users × prompts).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from prefgen.core.io import load_tensors, write_table
from prefgen.core.logging import get_logger
from prefgen.core.seeding import derive_seed, rng
from prefgen.evaluation.bootstrap import two_way_ci
from prefgen.premier.modulation import USERS_KEY, fit_new_users, heldout_denoising_loss
from prefgen.premier.premier_new_users import (
    add_stage2_inputs,
    encode_liked,
    liked_history,
    load_stage1,
    noise_scheduler,
    subset,
)
from prefgen.premier.user_tokens import CombinationEmbedding, UserEmbeddingTable

log = get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_stage2_inputs(parser)
    parser.add_argument("--truth", default=None, help="data/truth/ (oracle; synthetic only)")
    parser.add_argument("--out", required=True, help="tables/premier_history.csv")
    parser.add_argument("--threads", type=int, default=1)


class ArmEmbeddings(nn.Module):
    """Both arms' rows in one module: ids below ``offset`` are combinations, the rest free."""

    def __init__(self, combo: CombinationEmbedding, free: UserEmbeddingTable, offset: int):
        super().__init__()
        self.combo, self.free, self.offset = combo, free, offset

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        is_free = ids >= self.offset
        out = torch.empty(len(ids), *self.free.weight.shape[1:], dtype=self.free.weight.dtype)
        if (~is_free).any():
            out[~is_free] = self.combo(ids[~is_free])
        if is_free.any():
            out[is_free] = self.free(ids[is_free])
        return out


def history_users(
    history: pd.DataFrame, need: int, max_users: int, seed: int, path: str
) -> list[int]:
    counts = history.groupby("user_id").size()
    eligible = np.sort(counts[counts >= need].index.to_numpy(np.int64))
    if len(eligible) < 2:
        raise ValueError(
            f"{path}: only {len(eligible)} held-out users have >= {need} liked "
            "images (max history + heldout); lower premier.history.lengths or "
            "premier.history.heldout"
        )
    pick = rng(seed, "premier", "history_users").permutation(len(eligible))[:max_users]
    return sorted(int(u) for u in eligible[pick])


def run_history(args: argparse.Namespace) -> None:
    from prefgen.generation.models import add_time_ids
    from prefgen.generation.sample import generate

    p = args.params
    cfg, seed = p["premier"]["history"], int(p["seed"])
    lengths = sorted(int(h) for h in cfg["lengths"])
    heldout = int(cfg["heldout"])
    t0 = time.perf_counter()
    pipe, cond, final = load_stage1(args.foundation, args.adapter, args.init)
    last = max(final["checkpoints"], key=lambda c: c["step"])
    cond.load_adapter_state_dict(load_tensors(Path(args.adapter).parent / last["path"]))
    history = liked_history(pd.read_parquet(args.pairs), seed, args.pairs)
    users = history_users(history, max(lengths) + heldout, int(cfg["max_users"]), seed, args.pairs)
    history = history[history["user_id"].isin(users)]

    # every image any arm fits on or is scored on, encoded once
    need = history[history["order"] < heldout + max(lengths)].reset_index(drop=True)
    encoded = encode_liked(pipe, need, args.images)
    order, user_col = need["order"].to_numpy(), need["user_id"].to_numpy(np.int64)

    # virtual users: one row per (arm, h, user); ids below `offset` are combinations
    arms = [("combination", h) for h in lengths] + [("free", h) for h in lengths]
    vid = {(a, h, u): i for i, (a, h, u) in enumerate((a, h, u) for a, h in arms for u in users)}
    offset = len(lengths) * len(users)
    fit_idx, fit_ids = [], []
    for (_arm, h, u), i in vid.items():
        sel = np.flatnonzero((user_col == u) & (order >= heldout) & (order < heldout + h))
        fit_idx.append(sel)
        fit_ids.append(np.full(len(sel), i))
    liked = subset(encoded, np.concatenate(fit_idx), np.concatenate(fit_ids))
    spec = cond.spec
    free = UserEmbeddingTable(
        list(range(offset, 2 * offset)),
        spec.user_tokens,
        spec.user_dim,
        float(p["premier"]["init_std"]),
        seed=derive_seed(seed, "premier", "history", "free"),
    )
    combo = CombinationEmbedding(list(range(offset)), cond.table.weight.detach())
    embed = ArmEmbeddings(combo, free, offset)
    time_ids = add_time_ids(pipe, 1)
    losses = fit_new_users(
        pipe.unet,
        noise_scheduler(pipe),
        cond.modulator,
        embed,
        liked,
        time_ids,
        int(cfg["steps"]),
        float(cfg["lr"]),
        int(cfg["batch_size"]),
        derive_seed(seed, "premier", "history", "fit"),
    )
    log.info(
        "premier-history: %d users x %d arms fitted jointly (%d rows), loss %.4f -> %.4f",
        len(users),
        len(arms),
        len(liked.user_ids),
        losses[0],
        float(np.mean(losses[-10:])),
    )

    # held-out denoising loss: identical noise for the base model and every arm
    held_idx = np.flatnonzero(order < heldout)
    held = subset(encoded, held_idx, user_col[held_idx])
    user_of_row = user_col[held_idx]
    hseed = derive_seed(seed, "premier", "history", "heldout")
    base_loss = heldout_denoising_loss(
        pipe.unet, noise_scheduler(pipe), None, held, time_ids, hseed
    )
    records = []
    with torch.no_grad():
        for arm, h in arms:
            ids = torch.tensor([vid[(arm, h, int(u))] for u in user_of_row])
            loss = heldout_denoising_loss(
                pipe.unet, noise_scheduler(pipe), embed(ids), held, time_ids, hseed
            )
            gain = (base_loss - loss).numpy()
            for u in users:
                records.append(
                    {
                        "arm": arm,
                        "history": h,
                        "user_id": u,
                        "prompt_id": -1,
                        "metric": "heldout_loss_gain",
                        "value": float(gain[user_of_row == u].mean()),
                    }
                )

    if args.truth and int(cfg["prompts"]) > 0:
        from prefgen.data.truth import load_truth, oracle_reward

        truth = load_truth(args.truth)
        prompts = (
            pd.read_parquet(args.eval_set)[["prompt_id", "caption"]]
            .drop_duplicates("prompt_id")
            .sort_values("prompt_id")
            .head(int(cfg["prompts"]))
        )
        grid = pd.DataFrame(
            [
                {
                    "user_id": u,
                    "prompt_id": int(pid),
                    "caption": cap,
                    "seed": derive_seed(seed, "premier", "history", u, int(pid)) % 2**31,
                }
                for u in users
                for pid, cap in zip(prompts["prompt_id"], prompts["caption"], strict=True)
            ]
        )
        base_imgs, _ = generate(pipe, grid, p["sample"])
        base_r = oracle_reward(
            np.stack(base_imgs), grid["caption"].tolist(), grid["user_id"].to_numpy(), truth
        )
        for arm, h in tqdm(arms, desc="history samples", mininterval=5):
            # the grid's user_id column carries virtual ids, so the sampler's per-batch callback
            # finds each row's tokens; the oracle scores for the real user
            virtual = grid.assign(user_id=[vid[(arm, h, int(u))] for u in grid["user_id"]])

            def extra(user_id: int, guidance: bool) -> tuple[dict[str, Any], bool]:
                tok = embed(torch.tensor([user_id])).detach()  # [1, T, D]: every row, both CFG
                return {"cross_attention_kwargs": {USERS_KEY: tok}}, True

            imgs, _ = generate(pipe, virtual, p["sample"], extra)
            r = oracle_reward(
                np.stack(imgs), grid["caption"].tolist(), grid["user_id"].to_numpy(), truth
            )
            for row, v, b in zip(grid.itertuples(), r, base_r, strict=True):
                records.append(
                    {
                        "arm": arm,
                        "history": h,
                        "user_id": row.user_id,
                        "prompt_id": row.prompt_id,
                        "metric": "oracle_gain_vs_base",
                        "value": float(v - b),
                    }
                )

    long = pd.DataFrame(records)
    n_boot, conf = int(p["evaluate"]["bootstrap"]), float(p["evaluate"]["confidence"])
    rows = []
    for (metric, h), g in long.groupby(["metric", "history"], sort=True):
        wide = g.pivot_table(index=["user_id", "prompt_id"], columns="arm", values="value")
        wide["combination_minus_free"] = wide["combination"] - wide["free"]
        for arm in ("combination", "free", "combination_minus_free"):
            ci = two_way_ci(
                wide[arm].to_numpy(),
                wide.index.get_level_values(0).to_numpy(),
                wide.index.get_level_values(1).to_numpy(),
                n_boot,
                rng(seed, "premier", "history", metric, h, arm),
                conf,
            )
            rows.append(
                {
                    "arm": arm,
                    "history": h,
                    "metric": metric,
                    "users": ci.n_users,
                    "n": ci.n,
                    "mean": ci.estimate,
                    "ci_low": ci.low,
                    "ci_high": ci.high,
                }
            )
    table = pd.DataFrame(rows)
    table["scale"] = p["scale"]
    write_table(
        table,
        Path(args.out).with_suffix(""),
        caption=(
            "Premier stage 2 (Fig. 6/7 in kind): new users as combination weights over training "
            "users vs a free embedding fitted from scratch, by history length. heldout_loss_gain = "
            "base denoising loss - the arm's, on liked images not used for fitting (higher = "
            "better); oracle_gain_vs_base = true reward of samples minus the base model's (same "
            "seeds). Mean with two-way bootstrap CI. Premier's FLUX MM-DiT modulation is applied "
            f"to the text tokens of our SDXL-architecture {p['scale']} stand-in "
            "(docs/decisions/25-premier-unet-host.md)."
        ),
    )
    log.info(
        "premier-history: done in %.1f s\n%s",
        time.perf_counter() - t0,
        table.to_string(index=False),
    )


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(max(1, args.threads))
    run_history(args)
