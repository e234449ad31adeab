"""``prefgen train-lpp``: train one LPP variant (LPP §4.1 schedule, scaled by the config).

A step takes ``batch_users`` seen users. Each user's 2·N_ref reference entries are shuffled (LPP:
"we randomly shuffle the order of reference history sequences during training"), encoded once
with the prototypes prepended, and ``targets_per_class`` liked and as many disliked training
images of that user are scored against them; the loss is L_base + L_aux (:mod:`.losses`) over
the batch, with every (liked, disliked) pair of a user in L_aux. Gradients of ``grad_accum``
steps are summed before an update.

Schedule: stage 1 trains the score head, the prototypes, the language model's LoRA adapters and
the vision encoder with its connector (``stage1.steps``, LPP: 5,000); stage 2 freezes all of it
and tunes only the prototypes (``stage2.steps``, LPP: 16,000). ``lpp_no_prototypes`` has
nothing to tune in stage 2 and stops after stage 1. AdamW with the config's learning rates and
weight decay; the batch sequence depends only on the seed, so the variants see the same data.

Outputs (``models/lpp/<variant>/``): ``model.safetensors`` (every tensor trained in stage 1 or 2:
head, prototypes, LoRA, vision encoder, connector; the frozen rest is rebuilt from the config),
``lpp.json`` (the params it was built from, the variant, users, timing, last losses) and
``train_log.csv`` (one row per update: stage, step and every loss term).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from prefgen.core.io import (
    atomic_dir,
    check_state_shapes,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from prefgen.core.logging import get_logger
from prefgen.core.seeding import rng, seed_everything
from prefgen.lpp.data import ImageBank, read_references, read_train_items
from prefgen.lpp.losses import lpp_loss
from prefgen.lpp.model import (
    LPPModel,
    build_model,
    model_metadata,
    set_stage,
    variant_spec,
)

log = get_logger(__name__)

WEIGHTS = "model.safetensors"
META = "lpp.json"
LOG = "train_log.csv"


@dataclass
class UserHistory:
    """One user's references (2·N_ref entries) and training targets."""

    user_id: int
    ref_uids: list[str]
    ref_captions: list[str]
    ref_liked: list[bool]
    liked: pd.DataFrame  # training items the user liked (image_uid, caption)
    disliked: pd.DataFrame


def histories(
    references: pd.DataFrame, items: pd.DataFrame
) -> tuple[list[UserHistory], dict[str, int]]:
    """Users with references and at least one liked and one disliked training image.

    Returns the users (sorted by id) and the count of users left out, by reason.
    """
    by_user = dict(iter(items.groupby("user_id", sort=True)))
    users, excluded = [], {"no_references": 0, "no_liked_or_no_disliked_train_image": 0}
    ref_users = set(references["user_id"].tolist())
    excluded["no_references"] = len(set(by_user) - ref_users)
    for user_id, refs in references.groupby("user_id", sort=True):
        own = by_user.get(user_id)
        if own is None:
            continue  # an unseen user: no training images by construction
        liked, disliked = own[own["liked"]], own[~own["liked"]]
        if liked.empty or disliked.empty:
            excluded["no_liked_or_no_disliked_train_image"] += 1
            continue
        users.append(
            UserHistory(
                int(user_id),
                refs["image_uid"].tolist(),
                refs["caption"].tolist(),
                refs["liked"].tolist(),
                liked[["image_uid", "caption"]].reset_index(drop=True),
                disliked[["image_uid", "caption"]].reset_index(drop=True),
            )
        )
    return users, excluded


@dataclass
class Batch:
    """Inputs of one step: per user a shuffled history, then the targets with their owner."""

    ref_texts: list[str]
    ref_images: list[list[Any]]
    owner: torch.Tensor
    captions: list[str]
    images: list[Any]
    liked: torch.Tensor


def sample_batch(
    model: LPPModel,
    users: list[UserHistory],
    bank: ImageBank,
    gen: np.random.Generator,
    batch_users: int,
    per_class: int,
) -> Batch:
    """``batch_users`` distinct users (with replacement only if there are fewer), each with a
    freshly shuffled reference order and ``per_class`` liked + ``per_class`` disliked targets."""
    pick = gen.choice(len(users), size=batch_users, replace=batch_users > len(users))
    ref_texts, ref_images, owner, caps, imgs, liked = [], [], [], [], [], []
    for row, idx in enumerate(pick):
        user = users[int(idx)]
        order = gen.permutation(len(user.ref_uids))
        ref_texts.append(
            model.reference_text(
                [user.ref_captions[i] for i in order], [user.ref_liked[i] for i in order]
            )
        )
        ref_images.append(bank.many(user.ref_uids[i] for i in order))
        for frame, is_liked in ((user.liked, True), (user.disliked, False)):
            take = gen.choice(len(frame), size=per_class, replace=per_class > len(frame))
            for j in take:
                owner.append(row)
                caps.append(str(frame.at[int(j), "caption"]))
                imgs.append(bank[str(frame.at[int(j), "image_uid"])])
                liked.append(is_liked)
    return Batch(ref_texts, ref_images, torch.tensor(owner), caps, imgs, torch.tensor(liked))


def forward_batch(model: LPPModel, batch: Batch) -> torch.Tensor:
    prefix = model.encode_references(batch.ref_texts, batch.ref_images)
    return model.score_targets(prefix, batch.owner, batch.captions, batch.images).logits


def train_lpp(
    model: LPPModel,
    users: list[UserHistory],
    bank: ImageBank,
    cfg: dict[str, Any],
    use_aux: bool,
    seed: int,
) -> list[dict[str, Any]]:
    """Both stages; returns one log row per update."""
    gen = rng(seed, "lpp", "train", "batches")
    stages = [(1, int(cfg["stage1"]["steps"]), float(cfg["stage1"]["lr"]))]
    if model.n_prototypes > 0:
        stages.append((2, int(cfg["stage2"]["steps"]), float(cfg["stage2"]["lr"])))
    aux = cfg["aux"]
    history: list[dict[str, Any]] = []
    model.train()
    for stage, steps, lr in stages:
        names = set_stage(model, stage, cfg["lm_tuning"], bool(cfg["train_vision"]))
        params = [p for p in model.parameters() if p.requires_grad]
        log.info(
            "stage %d: %d steps, lr %g, %d tensors (%d values) trainable",
            stage,
            steps,
            lr,
            len(names),
            sum(p.numel() for p in params),
        )
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=float(cfg["weight_decay"]))
        for step in tqdm(range(steps), desc=f"lpp stage {stage}", unit="step"):
            opt.zero_grad(set_to_none=True)
            totals: dict[str, float] = {}
            accum = int(cfg["grad_accum"])
            for _ in range(accum):
                batch = sample_batch(
                    model, users, bank, gen, int(cfg["batch_users"]), int(cfg["targets_per_class"])
                )
                logits = forward_batch(model, batch)
                terms = lpp_loss(
                    logits, batch.liked, batch.owner, use_aux, aux["form"], float(aux["margin"])
                )
                (terms["loss"] / accum).backward()
                pred_like = logits.detach()[:, 0] > logits.detach()[:, 1]
                terms["train_acc"] = (pred_like == batch.liked).float().mean()
                for key, value in terms.items():
                    totals[key] = totals.get(key, 0.0) + float(value.detach()) / accum
            grad_norm = torch.nn.utils.clip_grad_norm_(params, float(cfg["grad_clip"]))
            if not torch.isfinite(grad_norm):
                raise FloatingPointError(f"lpp stage {stage} step {step}: non-finite gradient")
            opt.step()
            history.append({"stage": stage, "step": step, **totals, "grad_norm": float(grad_norm)})
    model.eval()
    return history


# --- saving and loading --------------------------------------------------------------------------


def save_model(
    model: LPPModel,
    out: Path,
    variant: str,
    params: dict[str, Any],
    trained: list[str],
    info: dict[str, Any],
    history: list[dict[str, Any]],
) -> None:
    """Write the trained tensors, the params they were built from, and the training log."""
    state = dict(model.named_parameters())
    with atomic_dir(out) as tmp:
        save_tensors(
            {name: state[name] for name in trained},
            tmp / WEIGHTS,
            metadata=model_metadata(model, variant),
        )
        write_json(
            {"variant": variant, "params": params, "trained_tensors": trained, **info}, tmp / META
        )
        pd.DataFrame(history).to_csv(tmp / LOG, index=False)


def load_model(model_dir: str | Path, clip_dir: str | None = None) -> tuple[LPPModel, dict]:
    """Rebuild a trained variant from ``lpp.json`` and load its tensors (frozen, eval mode)."""
    model_dir = Path(model_dir)
    for name in (META, WEIGHTS):
        if not (model_dir / name).exists():
            raise FileNotFoundError(
                f"{model_dir / name}: missing; not a `prefgen train-lpp` output folder"
            )
    meta = read_json(model_dir / META)
    model = build_model(meta["params"], meta["variant"], clip_dir)
    state = load_tensors(model_dir / WEIGHTS)
    expected = set(meta["trained_tensors"])
    if set(state) != expected:
        raise ValueError(
            f"{model_dir / WEIGHTS}: holds {len(state)} tensors, lpp.json lists "
            f"{len(expected)}; e.g. {sorted(set(state) ^ expected)[:1]}"
        )
    check_state_shapes(model, state, model_dir / WEIGHTS)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(
            f"{model_dir / WEIGHTS}: tensors {unexpected[:3]} do not exist in the "
            "rebuilt model (config changed since training?)"
        )
    for param in model.parameters():
        param.requires_grad_(False)
    model.eval()
    return model, meta


# --- stage ---------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--references", required=True, help="splits/lpp/references.parquet")
    parser.add_argument("--train-items", required=True, help="splits/lpp/train_items.parquet")
    parser.add_argument("--images", required=True, help="data/clean/images.parquet")
    parser.add_argument(
        "--clip",
        default=None,
        help="models/clip (when the stand-in's vision tower starts from CLIP)",
    )
    parser.add_argument("--out", required=True, help="models/lpp/<variant>/")
    parser.add_argument("--threads", type=int, default=0)


def run(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    params = args.params
    variant = str(params["variant"])
    spec = variant_spec(variant)
    cfg = params["lpp"]
    seed = int(params["seed"])
    seed_everything(seed)
    t0 = time.time()
    references = read_references(args.references)
    items = read_train_items(args.train_items)
    users, excluded = histories(references, items)
    if not users:
        raise ValueError(
            f"{args.train_items}: no seen user has a liked and a disliked training "
            "image; LPP cannot be trained"
        )
    uids = set(references.loc[references["user_id"].isin([u.user_id for u in users]), "image_uid"])
    for user in users:
        uids |= set(user.liked["image_uid"]) | set(user.disliked["image_uid"])
    bank = ImageBank(args.images, uids)
    model = build_model(params, variant, args.clip or None)
    trained = set_stage(model, 1, cfg["lm_tuning"], bool(cfg["train_vision"]))
    log.info(
        "%s: %d training users (%s excluded), %d prototypes, aux=%s",
        variant,
        len(users),
        excluded,
        model.n_prototypes,
        spec["aux"],
    )
    history = train_lpp(model, users, bank, cfg, spec["aux"], seed)
    last = {k: v for k, v in history[-1].items()} if history else {}
    info = {
        "n_users": len(users),
        "excluded_users": excluded,
        "seconds": time.time() - t0,
        "last_step": last,
        "stand_in": model.stand_in,
    }
    save_model(model, Path(args.out), variant, params, trained, info, history)
    log.info("%s trained in %.1fs; last step %s", variant, time.time() - t0, last)
