"""Premier stage 2 (Premier §4.3): users outside training as combinations of training users.

``premier-new-users``: the held-out (unseen) users of the evaluation set get Premier
embeddings. For every checkpoint the sampler will use, the adapters and the training users'
embeddings are frozen and only the combination weights ``w`` of ``e_new = Σ_k w_k e_k`` are
fitted with the denoising loss on the user's first ``history`` liked images: the preferred
images of their support set (``splits/ppd/support.parquet``, the same pairs PPD's few shots and
PIPE's λ get), in a seeded order. Premier's main setting is 8 liked images; with a support set of
N pairs a user has at most N, so every method onboards a new user from the same evidence.
Writes ``adapters/premier_stage2/seed{train_seed}/`` in the trainer's layout (``final.json``
+ ``checkpoint-{step}/adapter.safetensors``, each the stage-1 weights plus ``new_users.*``),
which ``sample`` reads like any adapter folder, and
``embeddings/premier/seed{train_seed}.safetensors`` (every training and new user's tokens at
the last checkpoint, ``emb [U, T·D]``). The fits are seeded by the training seed; the liked
history by the run seed (the same likes for every training seed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from prefgen.core.io import (
    atomic_dir,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from prefgen.core.logging import get_logger
from prefgen.core.seeding import derive_seed, rng, training_seed
from prefgen.premier.modulation import (
    LikedImages,
    PremierConditioning,
    fit_new_users,
)
from prefgen.premier.user_tokens import CombinationEmbedding, bytes_per_user

log = get_logger(__name__)


def add_stage2_inputs(parser: argparse.ArgumentParser) -> None:
    """The inputs every stage-2 command reads: the stage-1 model and the new users' history."""
    parser.add_argument("--foundation", required=True, help="pipeline folder or hub id")
    parser.add_argument("--adapter", required=True, help="adapters/premier/final.json")
    parser.add_argument("--init", required=True, help="embeddings/premier_init.safetensors")
    parser.add_argument(
        "--pairs", required=True, help="stage 2: splits/ppd/support.parquet; history: test_unseen"
    )
    parser.add_argument("--images", required=True, help="data/clean/images.parquet")
    parser.add_argument("--eval-set", required=True, help="splits/eval_set.parquet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_stage2_inputs(parser)
    parser.add_argument("--out", required=True, help="adapters/premier_stage2/seed<k>/final.json")
    parser.add_argument(
        "--embeddings", required=True, help="embeddings/premier/seed<k>.safetensors"
    )
    parser.add_argument("--threads", type=int, default=1)


# --- data ------------------------------------------------------------------------------------
def liked_history(pairs: pd.DataFrame, seed: int, path: str = "pairs") -> pd.DataFrame:
    """Each user's distinct liked images (``image_w_uid`` of non-tie pairs) in a seeded order.

    Columns ``user_id, image_uid, caption, order``; ``order`` 0, 1, ... per user is the order in
    which a history of length ``h`` takes its images (the first ``h``).
    """
    for col in ("user_id", "image_w_uid", "caption", "is_tie", "ranking_id"):
        if col not in pairs.columns:
            raise ValueError(f"{path}: missing column '{col}' (split table schema)")
    liked = (
        pairs.loc[~pairs["is_tie"].astype(bool)]
        .sort_values("ranking_id", kind="stable")
        .drop_duplicates(["user_id", "image_w_uid"])
        .rename(columns={"image_w_uid": "image_uid"})[["user_id", "image_uid", "caption"]]
    )
    frames = []
    for user, group in liked.groupby("user_id", sort=True):
        perm = rng(seed, "premier", "history", int(user)).permutation(len(group))
        frames.append(group.iloc[perm].assign(order=np.arange(len(group))))
    if not frames:
        raise ValueError(f"{path}: no liked (non-tie) images")
    return pd.concat(frames, ignore_index=True)


@torch.no_grad()
def encode_liked(pipe: Any, rows: pd.DataFrame, images_parquet: str) -> LikedImages:
    """VAE latents (posterior mean × scaling factor) and text states of ``rows``' images,
    one LikedImages row per row of ``rows`` (``user_id`` as given)."""
    from prefgen.generation.encode import encode_images
    from prefgen.generation.images import load_images
    from prefgen.generation.models import encode_text, image_size

    uids = rows["image_uid"].astype(str).tolist()
    mean, _ = encode_images(pipe.vae, load_images(images_parquet, uids, image_size(pipe)), 256)
    captions = sorted(set(rows["caption"]))
    text = encode_text(pipe, captions)
    row = {c: i for i, c in enumerate(captions)}
    idx = torch.tensor([row[c] for c in rows["caption"]])
    return LikedImages(
        torch.tensor(rows["user_id"].to_numpy(np.int64)),
        mean,
        text["prompt_embeds"][idx],
        text["pooled"][idx],
    )


def subset(liked: LikedImages, rows: np.ndarray, user_ids: np.ndarray) -> LikedImages:
    """Rows ``rows`` of ``liked``, relabelled with ``user_ids`` (e.g. virtual users)."""
    idx = torch.as_tensor(rows, dtype=torch.int64)
    return LikedImages(
        torch.as_tensor(user_ids, dtype=torch.int64),
        liked.latents[idx],
        liked.prompt_embeds[idx],
        liked.pooled[idx],
    )


def load_stage1(
    foundation: str, adapter_json: str, init: str
) -> tuple[Any, PremierConditioning, dict[str, Any]]:
    """The frozen pipeline with the Premier conditioning installed, and the training summary."""
    from prefgen.generation.adapters import UserEmbeddings, build_conditioning
    from prefgen.generation.models import load_pipeline

    final = read_json(adapter_json)
    if not final.get("complete", False):
        raise ValueError(f"{adapter_json}: training did not complete")
    if final["method_config"].get("conditioning") != "premier":
        raise ValueError(
            f"{adapter_json}: not a Premier run (conditioning "
            f"{final['method_config'].get('conditioning')!r})"
        )
    pipe = load_pipeline(foundation)
    cond = build_conditioning(pipe.unet, final["method_config"], UserEmbeddings.load(init))
    if not isinstance(cond, PremierConditioning):
        raise ValueError(f"{adapter_json}: conditioning built as {type(cond).__name__}")
    return pipe, cond, final


def noise_scheduler(pipe: Any) -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


# --- premier-new-users -----------------------------------------------------------------------
def fit_combination(
    pipe: Any,
    cond: PremierConditioning,
    liked: LikedImages,
    users: list[int],
    cfg: dict[str, Any],
    seed: int,
) -> tuple[torch.Tensor, list[float]]:
    """Combination weights ``[N, K]`` of ``users`` at the conditioning's current checkpoint."""
    from prefgen.generation.models import add_time_ids

    combo = CombinationEmbedding(users, cond.table.weight.detach())
    losses = fit_new_users(
        pipe.unet,
        noise_scheduler(pipe),
        cond.modulator,
        combo,
        liked,
        add_time_ids(pipe, 1),
        int(cfg["steps"]),
        float(cfg["lr"]),
        int(cfg["batch_size"]),
        seed,
    )
    return combo.weights.detach().clone(), losses


def run_new_users(args: argparse.Namespace) -> None:
    from prefgen.generation.sample import select_steps

    p = args.params
    cfg, seed = p["premier"]["new_users"], int(p["seed"])
    t0 = time.perf_counter()
    pipe, cond, final = load_stage1(args.foundation, args.adapter, args.init)
    eval_set = pd.read_parquet(args.eval_set)
    new_users = sorted(
        int(u) for u in eval_set.loc[eval_set["user_group"] == "unseen", "user_id"].unique()
    )
    history = liked_history(pd.read_parquet(args.pairs), seed, args.pairs)
    missing = sorted(set(new_users) - set(history["user_id"]))
    if missing:
        raise ValueError(
            f"{args.pairs}: unseen evaluation users {missing[:5]} have no liked "
            "images to fit a Premier embedding on"
        )
    rows = history[history["user_id"].isin(new_users) & (history["order"] < int(cfg["history"]))]
    liked = encode_liked(pipe, rows, args.images) if new_users else None
    log.info(
        "premier-new-users: %d unseen users, %d liked images (history <= %d, mean %.1f)",
        len(new_users),
        len(rows),
        int(cfg["history"]),
        rows.groupby("user_id").size().mean() if len(rows) else 0.0,
    )

    out = Path(args.out)
    adapter_dir = Path(args.adapter).parent
    ckpts, stage2 = [], []
    with atomic_dir(out.parent) as tmp:
        for ck in select_steps(final, p["sample"]["steps"], args.adapter):
            cond.load_adapter_state_dict(load_tensors(adapter_dir / ck["path"]))
            losses: list[float] = []
            if new_users:
                fit_seed = derive_seed(training_seed(p), "premier", "stage2", ck["step"])
                weights, losses = fit_combination(pipe, cond, liked, new_users, cfg, fit_seed)
                cond.set_new_users(torch.tensor(new_users), weights)
            path = Path(f"checkpoint-{ck['step']}") / "adapter.safetensors"
            save_tensors(
                cond.adapter_state_dict(),
                tmp / path,
                metadata={"step": str(ck["step"]), "stage": "premier-stage2"},
            )
            ckpts.append(
                {"step": ck["step"], "path": str(path), "bytes": (tmp / path).stat().st_size}
            )
            stage2.append(
                {
                    "step": ck["step"],
                    "first_loss": losses[0] if losses else None,
                    "last_loss": float(np.mean(losses[-10:])) if losses else None,
                }
            )
            log.info(
                "step %d: fitted %d new users (loss %s -> %s)",
                ck["step"],
                len(new_users),
                stage2[-1]["first_loss"],
                stage2[-1]["last_loss"],
            )
        spec = cond.spec
        summary = {
            **final,
            "checkpoints": ckpts,
            "stage2": {
                "new_users": new_users,
                "history": int(cfg["history"]),
                "fits": stage2,
                "steps": int(cfg["steps"]),
                "lr": float(cfg["lr"]),
                "batch_size": int(cfg["batch_size"]),
                "train_seed": p.get("train_seed"),
                # the combination weights [new users, training users], fitted per checkpoint
                "trainable_parameters": len(new_users) * len(cond.table.user_ids),
                "seconds": time.perf_counter() - t0,
                "bytes_per_training_user": bytes_per_user(spec.user_tokens, spec.user_dim),
                "bytes_per_new_user": 4 * len(cond.table.user_ids),
            },
        }
        write_json(summary, tmp / out.name)
    if args.embeddings:
        ids = torch.cat([cond.table.user_ids.cpu(), torch.tensor(new_users, dtype=torch.int64)])
        tokens, own = cond.user_tokens(ids.tolist())
        assert own.all()
        save_tensors(
            {"user_ids": ids, "emb": tokens.reshape(len(ids), -1).float()},
            args.embeddings,
            metadata={
                "method": "premier",
                "num_tokens": str(spec.user_tokens),
                "dim": str(spec.user_dim),
                "step": str(ckpts[-1]["step"]),
                "new_users": ",".join(map(str, new_users)),
            },
        )
    log.info("premier-new-users: %d checkpoints in %.1f s", len(ckpts), time.perf_counter() - t0)


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(max(1, args.threads))
    run_new_users(args)
