"""``prefgen vlm-pretrain``: teach the tiny LLaVA-OneVision stand-in to answer PPD's question.

A randomly initialised language model cannot tell which image of a shot was preferred: its PPD
embedding then names users by what they asked for only, and the probe's label-shuffled control
scores the same as PPD. A real VLM has learned from image-text data to look at images and say
how they differ. This stage gives the stand-in a short instruction tuning of that kind, on
training data only:

* each example is PPD's own few-shot prompt (:func:`prefgen.embeddings.ppd.build_prompt`, the
  model's chat template) over ``n_shots`` non-tie pairs of one *training* user
  (``splits/ppd/train.parquet``: seen users, captions outside ``test_seen`` and the held-out
  prompts), so the prompt the VLM is trained on is the prompt it is read out on;
* the assistant's answer is the profile PPD asks for, written from the pixels: for each of the
  world's image attributes (``prefgen.data.attributes``, measured on the images, the same
  measurements CLIP's training captions describe), the word for the side the preferred images
  lean to over the shots ("dark", "bright", ...; :func:`profile_answer`);
* the vision tower (initialised from the mini CLIP) stays frozen, as in LLaVA's alignment
  stage; the projector and the language model train on the answer tokens (next-token
  cross-entropy), a fixed number of AdamW steps from the seed.

Output: ``models/vlm_stand_in/model.safetensors`` (every tensor of the stand-in, loaded by
:func:`prefgen.embeddings.vlm.build_stand_in`) and ``pretrain.json`` (history, the data used,
train seconds). The result is still a stand-in and is labelled so.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from prefgen.core.config import ConfigError
from prefgen.core.io import atomic_dir, save_tensors
from prefgen.core.logging import get_logger
from prefgen.core.seeding import derive_seed, rng, seed_everything

log = get_logger(__name__)

META_NAME = "pretrain.json"

#: Words of the profile answer, per attribute of ``prefgen.data.attributes.ATTRIBUTES``:
#: (word when the preferred images have less of it, word when they have more).
PROFILE_WORDS: dict[str, tuple[str, str]] = {
    "brightness": ("dark", "bright"),
    "saturation": ("pale", "vivid"),
    "warmth": ("cool", "warm"),
    "contrast": ("flat", "contrasty"),
    "sharpness": ("soft", "crisp"),
    "colourfulness": ("plain", "colourful"),
    "object_size": ("small", "large"),
    "caption_fidelity": ("off-colour", "true-colour"),
}


def profile_answer(attrs_w: pd.DataFrame, attrs_l: pd.DataFrame) -> str:
    """The profile for one few-shot prompt: per attribute, the side the preferred images lean to.

    ``attrs_w``/``attrs_l`` hold the attributes of the shots' preferred/dispreferred images (one
    row per shot). The mean difference over shots picks the word; an attribute with no defined
    difference (NaN caption fidelity on every shot, or exactly equal) says nothing.
    """
    diff = attrs_w.to_numpy(dtype=np.float64) - attrs_l.to_numpy(dtype=np.float64)
    words = []
    for j, attr in enumerate(attrs_w.columns):
        column = diff[:, j]
        column = column[np.isfinite(column)]
        if len(column) == 0 or column.mean() == 0:
            continue
        low, high = PROFILE_WORDS[attr]
        words.append(high if column.mean() > 0 else low)
    return " ".join(words) + "."


def pretraining_groups(
    pairs: pd.DataFrame, n_shots: int, n_groups: int, seed: int
) -> list[pd.DataFrame]:
    """``n_groups`` few-shot groups of ``n_shots`` pairs of one user each, in training order.

    Each pass reshuffles every user's pairs (seeded per pass and user) and cuts them into groups
    of ``n_shots`` (a remainder is left for the next pass); the pass's groups are then shuffled
    across users. Passes repeat until ``n_groups`` are drawn.
    """
    by_user = [(int(u), g.sort_values("ranking_id")) for u, g in pairs.groupby("user_id")]
    by_user = [(u, g) for u, g in by_user if len(g) >= n_shots]
    if not by_user:
        raise ValueError(f"vlm-pretrain: no training user has {n_shots} non-tie pairs")
    groups: list[pd.DataFrame] = []
    epoch = 0
    while len(groups) < n_groups:
        chunk = []
        for user_id, own in by_user:
            order = rng(seed, "vlm_pretrain", "groups", epoch, user_id).permutation(len(own))
            for start in range(0, len(own) - n_shots + 1, n_shots):
                pick = order[start : start + n_shots]
                chunk.append(own.iloc[pick].assign(shot=np.arange(n_shots)))
        for i in rng(seed, "vlm_pretrain", "order", epoch).permutation(len(chunk)):
            groups.append(chunk[i])
        epoch += 1
    return groups[:n_groups]


def encode_examples(
    vlm: Any, groups: list[pd.DataFrame], images: dict[str, Any], answers: list[str]
) -> dict[str, torch.Tensor]:
    """Processor inputs for prompts + answers, with ``labels`` on the answer tokens only."""
    from prefgen.embeddings.ppd import build_prompt, chat_text

    processor = vlm.processor
    end = processor.tokenizer.eos_token
    prompts, full, image_lists = [], [], []
    for group, answer in zip(groups, answers, strict=True):
        question, uids = build_prompt(group, processor.image_token)
        prompt = chat_text(processor, question)
        prompts.append(prompt)
        full.append(prompt + answer + end)
        image_lists.append([images[u] for u in uids])
    inputs = processor(text=full, images=image_lists, return_tensors="pt", padding=True)
    answer_ids = processor.tokenizer([a + end for a in answers], add_special_tokens=False)
    labels = torch.full_like(inputs["input_ids"], -100)
    mask = inputs["attention_mask"]
    for row, ids in enumerate(answer_ids["input_ids"]):
        n = len(ids)
        if not torch.equal(inputs["input_ids"][row, -n:], torch.tensor(ids)):
            raise ValueError(
                f"vlm-pretrain: answer {answers[row]!r} does not tokenise the same after its "
                "prompt; the profile words must start a new token"
            )
        labels[row, -n:] = inputs["input_ids"][row, -n:]
    inputs["labels"] = labels
    inputs["position_ids"] = (mask.cumsum(1) - 1).clamp_min(0)
    return dict(inputs)


def pretrain(
    vlm: Any,
    pairs: pd.DataFrame,
    images_parquet: str | Path,
    cfg: dict[str, Any],
    n_shots: int,
    seed: int,
) -> list[dict[str, float]]:
    """Instruction-tune ``vlm`` (the stand-in) in place on ``pairs``; returns the loss history.

    ``cfg`` is ``vlm.pretrain`` (steps, batch_size, lr, warmup_steps, weight_decay).
    """
    from prefgen.data.attributes import ATTRIBUTES, measure_attributes
    from prefgen.embeddings.ppd import load_pil_images

    steps, batch_size = int(cfg["steps"]), int(cfg["batch_size"])
    groups = pretraining_groups(pairs, n_shots, steps * batch_size, seed)
    shots = pd.concat(groups, ignore_index=True)
    uids = pd.concat([shots["image_w_uid"], shots["image_l_uid"]]).astype(str)
    images = load_pil_images(images_parquet, uids)
    # one caption per image for caption fidelity: the pairs' caption (both sides share it)
    captions = dict(zip(uids, pd.concat([shots["caption"], shots["caption"]]), strict=True))
    order = sorted(images)
    measured = measure_attributes(
        np.stack([np.asarray(images[u]) for u in order]), [captions[u] for u in order]
    )
    attrs = measured[list(ATTRIBUTES)].set_axis(order)
    answers = [
        profile_answer(
            attrs.loc[g["image_w_uid"].astype(str)], attrs.loc[g["image_l_uid"].astype(str)]
        )
        for g in groups
    ]

    model = vlm.model
    model.train()
    model.requires_grad_(True)
    model.model.vision_tower.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": float(cfg["weight_decay"])},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=float(cfg["lr"]),
    )
    warmup = min(int(cfg["warmup_steps"]), steps)

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    dtype = next(model.parameters()).dtype
    history: list[dict[str, float]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "vlm_pretrain", "torch"))
        for step in range(steps):
            batch = slice(step * batch_size, (step + 1) * batch_size)
            inputs = encode_examples(vlm, groups[batch], images, answers[batch])
            inputs = {k: v.to(vlm.device) for k, v in inputs.items()}
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            loss = model(**inputs).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"vlm-pretrain: non-finite loss at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            sched.step()
            history.append({"step": step + 1, "loss": float(loss.detach())})
            if (step + 1) % max(1, steps // 10) == 0 or step == 0:
                log.info("vlm-pretrain: step %d/%d loss %.4f", step + 1, steps, history[-1]["loss"])
    model.eval().requires_grad_(False)
    return history


# --- the command ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", required=True, help="splits/ppd/train.parquet (seen users)")
    parser.add_argument("--images", required=True, help="data/clean/images.parquet")
    parser.add_argument("--clip", default=None, help="models/clip/ (stand-in vision init)")
    parser.add_argument("--out-dir", required=True, help="models/vlm_stand_in/")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")


def run(args: argparse.Namespace) -> None:
    from prefgen.embeddings.ppd import candidate_pairs, read_split
    from prefgen.embeddings.vlm import STAND_IN, STAND_IN_WEIGHTS, build_stand_in

    params = args.params
    seed, vlm_cfg = int(params["seed"]), params["vlm"]
    if vlm_cfg["model"] != STAND_IN:
        raise ConfigError("vlm-pretrain trains the stand-in only; vlm.model is a checkpoint")
    if int(vlm_cfg["pretrain"]["steps"]) < 1:
        raise ConfigError("vlm.pretrain.steps is 0: the stand-in is not pre-trained")
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(derive_seed(seed, "vlm_pretrain"))
    emb_cfg = params["ppd"]["embedding"]
    pairs = candidate_pairs(read_split(args.train), exclude_ties=True)
    t0 = time.time()
    vlm = build_stand_in(vlm_cfg["stand_in"], seed, args.clip or None)
    history = pretrain(vlm, pairs, args.images, vlm_cfg["pretrain"], int(emb_cfg["n_shots"]), seed)
    seconds = round(time.time() - t0, 2)
    meta = {
        "label": "tiny LLaVA-OneVision stand-in, instruction-tuned on training pairs",
        "train": str(args.train),
        "n_train_users": int(pairs["user_id"].nunique()),
        "n_shots": int(emb_cfg["n_shots"]),
        "pretrain": vlm_cfg["pretrain"],
        "history": history,
        "train_seconds": seconds,
    }
    with atomic_dir(args.out_dir) as tmp:
        save_tensors(
            dict(vlm.model.state_dict()),
            Path(tmp) / STAND_IN_WEIGHTS,
            metadata={"config": vlm.config_json, "pretrain": json.dumps(vlm_cfg["pretrain"])},
        )
        (Path(tmp) / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    log.info(
        "vlm-pretrain: %d steps in %.1f s, loss %.3f -> %.3f",
        len(history),
        seconds,
        history[0]["loss"],
        history[-1]["loss"],
    )
