"""``prefgen clip``: the CLIP model whose frozen encoders feed the PIPE user model (PIPE §2.2).

Two sources, one saved format and one loading path:

- ``source: train`` (smoke, mini; a **stand-in**): a tiny open_clip ``CLIP`` architecture given in
  the config (``clip.model_cfg``), trained contrastively here on the world's (image, caption)
  pairs (captions rewritten from the pixels by ``prefgen.data.captions``) with open_clip's
  bundled BPE tokenizer (shipped in the package, no download).
- ``source: pretrained`` (paper): ``open_clip.create_model_and_transforms(pretrained_model,
  pretrained=pretrained_tag)``, e.g. ``ViT-H-14`` / ``laion2b_s32b_b79k``; nothing is trained.

Either way the output folder is open_clip's own local-dir layout (``open_clip_config.json`` with
``model_cfg`` + ``preprocess_cfg``, and ``model.safetensors``), so :func:`load_clip` is just
``open_clip.create_model_and_transforms("local-dir:<dir>")`` and
``open_clip.get_tokenizer("local-dir:<dir>")``: the architecture is registered with open_clip
through that folder, and the tokenizer is the bundled ``SimpleTokenizer`` for both scales.

The stage also reports held-out zero-shot retrieval (image -> caption among N candidates, with
captions never seen in training) against chance in ``tables/clip_retrieval.csv``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from prefgen.core.io import atomic_dir, save_tensors, write_table
from prefgen.core.logging import get_logger
from prefgen.core.seeding import derive_seed, rng, seed_everything
from prefgen.data.captions import training_captions
from prefgen.user_model.imageio import load_images

log = get_logger(__name__)

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "model.safetensors"

ImageBatch = np.ndarray | Sequence[Image.Image] | Sequence[np.ndarray]


# --------------------------------------------------------------------------- building / loading
def write_open_clip_config(
    folder: Path, model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any], extra: dict[str, Any]
) -> None:
    """The local-dir config open_clip reads (``model_cfg``, ``preprocess_cfg``) + our metadata."""
    payload = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg, "prefgen": extra}
    (folder / CONFIG_NAME).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def build_clip(params: dict[str, Any], folder: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Create the CLIP model named by ``params`` and write its config into ``folder``.

    Returns the model and the open_clip config written. ``source: train`` builds random weights
    from ``model_cfg`` through open_clip's local-dir loader (the same call :func:`load_clip`
    uses); ``source: pretrained`` loads the published weights (needs the hub; paper scale only).
    """
    import open_clip

    source = params["source"]
    if source == "train":
        model_cfg = json.loads(json.dumps(params["model_cfg"]))
        size = int(model_cfg["vision_cfg"]["image_size"])
        preprocess_cfg = {
            "size": size,
            "mean": list(params["image_mean"]),
            "std": list(params["image_std"]),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
            "mode": "RGB",
            "fill_color": 0,
        }
        extra = {
            "source": "train",
            "name": params["name"],
            "stand_in": "tiny open_clip architecture trained on the synthetic world",
        }
        write_open_clip_config(folder, model_cfg, preprocess_cfg, extra)
        model, _, _ = open_clip.create_model_and_transforms(
            f"local-dir:{folder}", load_weights=False
        )
    elif source == "pretrained":
        name, tag = params["pretrained_model"], params["pretrained_tag"]
        model, _, _ = open_clip.create_model_and_transforms(name, pretrained=tag)
        model_cfg = open_clip.get_model_config(name)
        preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(model))
        extra = {"source": "pretrained", "name": f"{name}/{tag}", "stand_in": ""}
        write_open_clip_config(folder, model_cfg, preprocess_cfg, extra)
    else:
        raise ValueError(f"clip.source: expected 'train' or 'pretrained', got {source!r}")
    return model, {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg, "prefgen": extra}


def save_clip(model: torch.nn.Module, folder: Path) -> None:
    """Write the weights next to the config, as safetensors (open_clip loads this file name)."""
    save_tensors(dict(model.state_dict()), folder / WEIGHTS_NAME)


def load_clip(folder: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, Any, Any]:
    """``(model, preprocess, tokenizer)`` from a folder written by the ``clip`` stage.

    Uses open_clip's own local-dir loader, so the folder is a regular open_clip checkpoint.
    The model is in eval mode with gradients off (it is frozen everywhere downstream).
    """
    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: missing {name}; run the clip stage first")
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{folder}", device=device
    )
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model.eval().requires_grad_(False)
    return model, preprocess, tokenizer


# --------------------------------------------------------------------------- pixels and embeddings
def pixel_tensor(
    images: ImageBatch, preprocess: Any, preprocess_cfg: dict[str, Any]
) -> torch.Tensor:
    """Raw RGB images -> the normalised ``[N,3,S,S]`` tensor the vision tower expects.

    A uint8 array already at the model's size takes a vectorised path (resize and crop are the
    identity there); anything else (PIL images, other sizes, generated samples) goes image by
    image through open_clip's own ``preprocess``. Both give the same numbers (tested).
    """
    size = preprocess_cfg["size"]
    size = int(size[0] if isinstance(size, list | tuple) else size)
    if (
        isinstance(images, np.ndarray)
        and images.ndim == 4
        and images.dtype == np.uint8
        and images.shape[1:] == (size, size, 3)
    ):
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(preprocess_cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(preprocess_cfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
        return (x - mean) / std
    out = []
    for i, item in enumerate(images):
        if isinstance(item, Image.Image):
            img = item.convert("RGB")
        else:
            arr = np.asarray(item)
            if arr.ndim != 3 or arr.shape[-1] != 3:
                raise ValueError(
                    f"images[{i}]: expected an RGB [H,W,3] array or PIL image, "
                    f"got shape {arr.shape}"
                )
            if arr.dtype != np.uint8:
                raise ValueError(f"images[{i}]: expected uint8 pixels, got {arr.dtype}")
            img = Image.fromarray(arr)
        if preprocess is None:
            preprocess = default_preprocess(preprocess_cfg)
        out.append(preprocess(img))
    if not out:
        return torch.zeros((0, 3, size, size))
    return torch.stack(out)


def default_preprocess(preprocess_cfg: dict[str, Any]) -> Any:
    """open_clip's inference transform for a preprocess config (what load_clip returns)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    keys = PreprocessCfg.__dataclass_fields__
    cfg = PreprocessCfg(**{k: v for k, v in preprocess_cfg.items() if k in keys})
    return image_transform_v2(cfg, is_train=False)


@torch.no_grad()
def encode_images(
    model: torch.nn.Module,
    preprocess: Any,
    images: ImageBatch,
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """L2-normalised image embeddings ``[N,D]`` (float32), computed in batches."""
    cfg = _preprocess_cfg(model)
    n = len(images)
    chunks = []
    for start in tqdm(range(0, n, batch_size), desc="images", disable=not progress, mininterval=5):
        batch = images[start : start + batch_size]
        chunks.append(model.encode_image(pixel_tensor(batch, preprocess, cfg), normalize=True))
    dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else 0
    return torch.cat(chunks) if chunks else torch.zeros((0, dim))


@torch.no_grad()
def encode_captions(
    model: torch.nn.Module,
    tokenizer: Any,
    captions: Sequence[str],
    batch_size: int = 512,
    progress: bool = False,
) -> torch.Tensor:
    """L2-normalised caption embeddings ``[N,D]`` (float32), computed in batches."""
    captions = [str(c) for c in captions]
    chunks = []
    for start in tqdm(
        range(0, len(captions), batch_size), desc="captions", disable=not progress, mininterval=5
    ):
        tokens = tokenizer(captions[start : start + batch_size])
        chunks.append(model.encode_text(tokens, normalize=True))
    dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else 0
    return torch.cat(chunks) if chunks else torch.zeros((0, dim))


def _preprocess_cfg(model: torch.nn.Module) -> dict[str, Any]:
    import open_clip

    return open_clip.get_model_preprocess_cfg(model)


# --------------------------------------------------------------------------- training
def caption_split(captions: Sequence[str], holdout_fraction: float, seed: int) -> set[str]:
    """The captions held out of CLIP training (whole captions, so retrieval is zero-shot)."""
    unique = sorted(set(captions))
    n_hold = int(round(holdout_fraction * len(unique)))
    if holdout_fraction > 0 and n_hold < 2:
        n_hold = min(2, len(unique) - 1)
    order = rng(seed, "clip", "holdout").permutation(len(unique))
    return {unique[i] for i in order[:n_hold]}


def train_clip(
    model: torch.nn.Module,
    tokenizer: Any,
    images: np.ndarray,
    captions: Sequence[str],
    preprocess_cfg: dict[str, Any],
    train: dict[str, Any],
    seed: int,
) -> list[dict]:
    """Contrastive training of ``model`` on (image, caption) pairs; returns per-epoch history.

    Many images share a caption, so a batch embeds each *distinct* caption once: the
    image->text loss is a plain cross-entropy over the batch's distinct captions and the
    text->image loss spreads its target uniformly over all images of that caption (standard
    CLIP would call those duplicates negatives).
    """
    gen = torch.Generator().manual_seed(derive_seed(seed, "clip", "batches"))
    unique, cap_idx = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
    tokens = tokenizer(list(unique))
    cap_idx_t = torch.from_numpy(cap_idx.astype(np.int64))
    n = len(images)
    bs = min(int(train["batch_size"]), n)
    steps_per_epoch = max(1, n // bs)
    total = steps_per_epoch * int(train["epochs"])
    warmup = min(int(train["warmup_steps"]), total)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        plain = p.ndim < 2 or "embedding" in name or "logit_scale" in name
        (no_decay if plain else decay).append(p)
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": float(train["weight_decay"])},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=float(train["lr"]),
        fused=True,
    )

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    history, step = [], 0
    bar = tqdm(total=total, desc="clip", mininterval=5)
    for epoch in range(int(train["epochs"])):
        perm = torch.randperm(n, generator=gen)
        losses, accs = [], []
        for b in range(steps_per_epoch):
            idx = perm[b * bs : (b + 1) * bs]
            batch_caps = cap_idx_t[idx]
            cols, local = torch.unique(batch_caps, return_inverse=True)
            pix = pixel_tensor(images[idx.numpy()], None, preprocess_cfg)
            img = F.normalize(model.encode_image(pix), dim=-1)
            txt = F.normalize(model.encode_text(tokens[cols]), dim=-1)
            logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T  # [B, C]
            loss_i = F.cross_entropy(logits, local)
            target_t = F.one_hot(local, len(cols)).T.float()  # [C, B]
            target_t = target_t / target_t.sum(1, keepdim=True)
            loss_t = -(target_t * F.log_softmax(logits.T, dim=1)).sum(1).mean()
            loss = 0.5 * (loss_i + loss_t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            losses.append(float(loss.detach()))
            accs.append(float((logits.argmax(1) == local).float().mean()))
        history.append(
            {
                "epoch": epoch,
                "loss": float(np.mean(losses)),
                "batch_acc": float(np.mean(accs)),
                "logit_scale": float(model.logit_scale.detach().exp()),
            }
        )
        log.info(
            "clip epoch %d: loss %.4f, in-batch accuracy %.3f",
            epoch,
            history[-1]["loss"],
            history[-1]["batch_acc"],
        )
    bar.close()
    model.eval()
    return history


# --------------------------------------------------------------------------- retrieval evaluation
@torch.no_grad()
def retrieval_accuracy(
    img_emb: torch.Tensor, cap_emb: torch.Tensor, true_cap: np.ndarray, n_candidates: int, seed: int
) -> tuple[float, int]:
    """Image -> caption top-1 accuracy among ``n_candidates`` distinct captions (true + random).

    ``cap_emb`` holds the distinct captions of the evaluated set, ``true_cap[i]`` the row of
    image i's caption. Returns (accuracy, candidates actually used).
    """
    n_caps = cap_emb.shape[0]
    k = min(int(n_candidates), n_caps)
    gen = rng(seed, "clip", "retrieval")
    sims = (img_emb @ cap_emb.T).numpy()  # [N, C]
    correct = 0
    for i, t in enumerate(true_cap):
        others = np.delete(np.arange(n_caps), t)
        cand = np.concatenate([[t], gen.choice(others, size=k - 1, replace=False)])
        correct += int(cand[np.argmax(sims[i, cand])] == t)
    return correct / max(1, len(true_cap)), k


def retrieval_table(
    model: torch.nn.Module,
    tokenizer: Any,
    images: np.ndarray,
    captions: np.ndarray,
    held_out: set[str],
    n_candidates: int,
    seed: int,
    label: str,
    max_queries: int = 2000,
) -> pd.DataFrame:
    """Rows for held-out (zero-shot) and training captions: accuracy vs chance."""
    rows = []
    for split, mask in (
        ("held_out", np.isin(captions, list(held_out))),
        ("train", ~np.isin(captions, list(held_out))),
    ):
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            continue
        if len(idx) > max_queries:
            pick = rng(seed, "clip", "queries", split).choice(idx, max_queries, replace=False)
            idx = np.sort(pick)
        caps, true = np.unique(captions[idx].astype(str), return_inverse=True)
        if len(caps) < 2:
            continue
        img_emb = encode_images(model, None, images[idx])
        cap_emb = encode_captions(model, tokenizer, list(caps))
        for k in sorted({int(n_candidates), len(caps)}):
            acc, used = retrieval_accuracy(img_emb, cap_emb, true, k, seed)
            rows.append(
                {
                    "model": label,
                    "split": split,
                    "direction": "image_to_caption",
                    "n_queries": len(idx),
                    "n_candidates": used,
                    "accuracy": acc,
                    "chance": 1.0 / used,
                }
            )
    return pd.DataFrame(
        rows,
        columns=["model", "split", "direction", "n_queries", "n_candidates", "accuracy", "chance"],
    )


# --------------------------------------------------------------------------- stage
def image_caption_pairs(pairs_parquet: str | Path, images: str = "all") -> pd.DataFrame:
    """One row per distinct (image_uid, caption) in the clean pairs: the contrastive data.

    ``images="preferred"`` keeps only images that won at least one non-tie pair: people prefer
    images that show what they asked for, so winners pair with their caption more faithfully
    (fewer wrong-colour objects) than the generator's raw output does.
    """
    cols = ["caption", "image_0_uid", "image_1_uid", "label_0", "label_1"]
    pairs = pd.read_parquet(pairs_parquet, columns=cols)

    def side(rows: pd.Series, k: int) -> pd.DataFrame:
        return pairs.loc[rows, [f"image_{k}_uid", "caption"]].set_axis(
            ["image_uid", "caption"], axis=1
        )

    if images == "preferred":
        both = pd.concat(
            [
                side(pairs["label_0"] > pairs["label_1"], 0),
                side(pairs["label_1"] > pairs["label_0"], 1),
            ]
        )
    elif images == "all":
        every = pd.Series(True, index=pairs.index)
        both = pd.concat([side(every, 0), side(every, 1)])
    else:
        raise ValueError(f"clip.images: expected 'all' or 'preferred', got {images!r}")
    both = both.dropna().astype({"image_uid": str, "caption": str})
    return both.drop_duplicates().sort_values(["image_uid", "caption"]).reset_index(drop=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="data/clean/images.parquet")
    parser.add_argument("--pairs", required=True, help="data/clean/pairs.parquet (captions)")
    parser.add_argument(
        "--exclude-prompts",
        default=None,
        help="splits/pipe/unseen_prompts.parquet: captions CLIP never sees",
    )
    parser.add_argument("--out-dir", required=True, help="models/clip/")
    parser.add_argument("--table", required=True, help="tables/clip_retrieval.csv")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")


def run(args: argparse.Namespace) -> None:
    import open_clip

    params = args.params
    clip_params, seed = params["clip"], int(params["seed"])
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(derive_seed(seed, "clip"))
    data = image_caption_pairs(args.pairs, clip_params["images"])
    if args.exclude_prompts:
        # the generation evaluation's prompts: CLIP scores those samples (clip_score) and feeds
        # every user model, so it never trains on them
        unseen = set(pd.read_parquet(args.exclude_prompts, columns=["caption"])["caption"])
        n_before = len(data)
        data = data.loc[~data["caption"].isin(unseen)].reset_index(drop=True)
        log.info(
            "clip: %d (image, caption) rows on the %d held-out prompts left out",
            n_before - len(data),
            len(unseen),
        )
    held_out = caption_split(
        data["caption"].tolist(), clip_params["eval"]["holdout_fraction"], seed
    )
    log.info(
        "clip: %d (image, caption) rows, %d distinct captions, %d held out",
        len(data),
        data["caption"].nunique(),
        len(held_out),
    )
    t0 = time.time()
    images = load_images(args.images, data["image_uid"].tolist())
    captions = data["caption"].to_numpy().astype(str)
    table = Path(args.table)
    with atomic_dir(args.out_dir) as tmp:
        model, cfg = build_clip(clip_params, tmp)
        history: list[dict] = []
        if clip_params["source"] == "train":
            train_mask = ~np.isin(captions, list(held_out))
            tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp}")
            train_captions = training_captions(
                images[train_mask], captions[train_mask], clip_params["train"], seed
            )
            history = train_clip(
                model,
                tokenizer,
                images[train_mask],
                train_captions,
                cfg["preprocess_cfg"],
                clip_params["train"],
                seed,
            )
        save_clip(model, tmp)
        meta = json.loads((tmp / CONFIG_NAME).read_text())
        meta["prefgen"]["history"] = history
        meta["prefgen"]["held_out_captions"] = sorted(held_out)
        meta["prefgen"]["train_seconds"] = round(time.time() - t0, 2)
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        model, _, tokenizer = load_clip(tmp)  # evaluate exactly what downstream stages will load
        label = cfg["prefgen"]["name"] + (" (stand-in)" if cfg["prefgen"]["stand_in"] else "")
        result = retrieval_table(
            model,
            tokenizer,
            images,
            captions,
            held_out,
            int(clip_params["eval"]["candidates"]),
            seed,
            label,
        )
    log.info("clip retrieval:\n%s", result.to_string(index=False))
    write_table(
        result,
        table.with_suffix(""),
        caption=(
            f"Zero-shot image->caption retrieval of the CLIP model ({label}); held_out captions "
            "were "
            "never seen in CLIP training; chance = 1/n_candidates."
        ),
    )
