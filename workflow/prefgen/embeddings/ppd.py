"""``prefgen vlm-embeddings``: PPD's user embedding, a VLM's hidden state over N few-shot pairs.

PPD (Dang et al., §4.2, §5.2) represents a user by N = 4 of their preference pairs, each a
caption, the preferred image and the dispreferred image, shown to LLaVA-OneVision in one
multi-image prompt; an intermediate hidden state of the VLM is the user embedding. Users with
fewer than N pairs get no embedding and are dropped ("824 users ... as no user embedding for this
user can be formed"). Seen users draw their examples from their PPD train pairs; held-out
(unseen) users from their support set (``splits/ppd/support.parquet``), the only pairs of theirs
that any method sees.

The prompt (:func:`build_prompt`) follows PPD's released extraction script: an opening sentence,
then per example its caption, ``<image>`` + "This is the preferred image.", ``<image>`` +
"This is the dispreferred image.", then the instruction to describe the pairs and summarise a
user profile, wrapped in the model's chat template. The images go to the processor in the same
order (preferred 1, dispreferred 1, preferred 2, ...). PPD's script lets the VLM write that
profile and keeps the hidden states of its last generation step (PIPE §1: "the VLM hidden state
of the final token in this text profile"); ``profile_tokens > 0`` does the same
(:func:`with_profile`), ``profile_tokens: 0`` reads the prompt's final token without generating
(a random stand-in writes no text worth reading; the mini stand-in, instruction-tuned by
``vlm_pretrain``, writes the attribute profile it was taught). Layer and pooling are config keys.

Outputs: ``embeddings/ppd.safetensors`` (``user_ids [U] int64, emb [U,D]``; metadata says
whether the stand-in made it), ``embeddings/ppd_shots.parquet`` (the pairs each user showed, in
prompt order) and ``embeddings/ppd_stats.json`` (users embedded, every excluded user counted by
reason).
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from prefgen.core.config import ConfigError
from prefgen.core.io import save_tensors, write_json, write_parquet
from prefgen.core.logging import get_logger
from prefgen.core.seeding import rng, seed_everything
from prefgen.embeddings.vlm import VLM, load_vlm

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
SHOT_COLUMNS = ["user_id", "shot", "ranking_id", "caption", "image_w_uid", "image_l_uid"]

INTRO = "You will see a few examples of images that one user preferred and dispreferred."
PREFERRED = "This is the preferred image."
DISPREFERRED = "This is the dispreferred image."
INSTRUCTION = (
    "Describe the preferred image and the dispreferred image of each example, explain how they "
    "differ in style, visual quality and aesthetics, then summarize the differences into a "
    "profile of this user's taste."
)
SYSTEM = "You are a helpful assistant."

REASON_FEW_PAIRS = "fewer_than_n_shots_pairs"
REASON_TIES = "fewer_than_n_shots_pairs_after_dropping_ties"


# --- which pairs a user shows --------------------------------------------------------------------


def read_split(path: str | Path) -> pd.DataFrame:
    """A PPD split table with the columns of docs/interfaces.md, or an error naming the file."""
    df = pd.read_parquet(path)
    missing = [c for c in SPLIT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {SPLIT_COLUMNS}")
    bad = df[SPLIT_COLUMNS[:-1]].isna().any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{path}: row {row} has a missing value in {SPLIT_COLUMNS[:-1]}")
    return df


def candidate_pairs(pairs: pd.DataFrame, exclude_ties: bool) -> pd.DataFrame:
    """Pairs a user can show as examples (a tie shows no preference: left out when asked)."""
    return pairs[~pairs["is_tie"].astype(bool)] if exclude_ties else pairs


def select_shots(
    pairs: pd.DataFrame, n_shots: int, exclude_ties: bool, seed: int, stream: str = "shots"
) -> tuple[pd.DataFrame, dict[int, str]]:
    """N example pairs per user (a seeded shuffle of their candidates), and who has too few.

    Each user's shuffle has its own seed stream (keyed by ``user_id``), so adding or removing
    other users never changes a user's examples. Returns the shots (``SHOT_COLUMNS``, ``shot``
    giving the order in the prompt) and ``{user_id: reason}`` for excluded users.
    """
    usable = dict(iter(candidate_pairs(pairs, exclude_ties).groupby("user_id", sort=True)))
    empty = pairs.iloc[:0]
    rows: list[pd.DataFrame] = []
    excluded: dict[int, str] = {}
    for user_id, group in pairs.groupby("user_id", sort=True):
        own = usable.get(user_id, empty).sort_values("ranking_id")
        if len(own) < n_shots:
            excluded[int(user_id)] = REASON_FEW_PAIRS if len(group) < n_shots else REASON_TIES
            continue
        order = rng(seed, "ppd", stream, int(user_id)).permutation(len(own))[:n_shots]
        shots = own.iloc[order].assign(shot=np.arange(n_shots))
        rows.append(shots[SHOT_COLUMNS])
    shots = (
        pd.concat(rows, ignore_index=True)
        if rows
        else pd.DataFrame({c: pd.Series(dtype="int64") for c in SHOT_COLUMNS})
    )
    return shots, excluded


def disjoint_draws(
    pairs: pd.DataFrame, n_draws: int, n_shots: int, exclude_ties: bool, seed: int, max_users: int
) -> pd.DataFrame:
    """``n_draws`` disjoint groups of a user's pairs, for users with at least ``n_draws*n_shots``.

    The user-classification probe (PPD Fig. 2) asks whether different few-shot draws of one user
    land near each other. A user's candidate pairs are shuffled and split into ``n_draws`` folds
    of near-equal size (every pair in exactly one fold); column ``draw`` names the fold and
    ``rank`` the position inside it, so ``rank < n_shots`` is that draw's few-shot prompt (PPD)
    while the whole fold is what a method that reads all pairs (PIPE's lambda refit) may use.
    At most ``max_users`` eligible users are kept (a seeded sample).
    """
    usable = candidate_pairs(pairs, exclude_ties)
    counts = usable.groupby("user_id").size()
    eligible = np.sort(counts.index[counts >= n_draws * n_shots].to_numpy())
    if len(eligible) > max_users:
        pick = rng(seed, "ppd", "probe", "users").choice(len(eligible), max_users, replace=False)
        eligible = np.sort(eligible[pick])
    by_user = dict(iter(usable.groupby("user_id", sort=True)))
    rows = []
    for user_id in eligible:
        own = by_user[user_id].sort_values("ranking_id")
        order = rng(seed, "ppd", "probe", "draws", int(user_id)).permutation(len(own))
        for draw, fold in enumerate(np.array_split(order, n_draws)):
            rows.append(own.iloc[fold].assign(draw=draw, rank=np.arange(len(fold))))
    if not rows:
        return pd.DataFrame(columns=[*SPLIT_COLUMNS, "draw", "rank"])
    return pd.concat(rows, ignore_index=True)


# --- the prompt ----------------------------------------------------------------------------------


def build_prompt(shots: pd.DataFrame, image_token: str) -> tuple[str, list[str]]:
    """PPD's few-shot question for one user, and the image uids in the order they appear.

    ``shots`` are one user's examples sorted by ``shot``. Each example contributes its caption,
    then the preferred image, then the dispreferred image, each image token followed by its
    label; the returned uid list has the same order, which is the order the processor maps the
    images onto the image tokens.
    """
    shots = shots.sort_values("shot")
    parts = [INTRO]
    uids: list[str] = []
    for i, row in enumerate(shots.itertuples(index=False), start=1):
        parts.append(f"Example {i}. Caption: {row.caption}")
        parts.append(f"{image_token} {PREFERRED}")
        parts.append(f"{image_token} {DISPREFERRED}")
        uids += [str(row.image_w_uid), str(row.image_l_uid)]
    parts.append(INSTRUCTION)
    return "\n\n".join(parts), uids


def chat_text(processor: Any, question: str) -> str:
    """The question wrapped in the processor's chat template, ready for the assistant's answer."""
    messages = [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
        {"role": "user", "content": [{"type": "text", "text": question}]},
    ]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


# --- images --------------------------------------------------------------------------------------


def load_pil_images(images_parquet: str | Path, uids: Sequence[str]) -> dict[str, Image.Image]:
    """Decode the requested images (any size: the processor resizes) keyed by ``image_uid``.

    Reads only the requested rows (a parquet filter), so it also works on the paper-scale
    table. A uid that is absent or not decodable is an error naming it.
    """
    wanted = sorted({str(u) for u in uids})
    table = pd.read_parquet(
        images_parquet, columns=["image_uid", "jpg"], filters=[("image_uid", "in", wanted)]
    )
    table = table.drop_duplicates("image_uid")
    missing = sorted(set(wanted) - set(table["image_uid"].astype(str)))
    if missing:
        raise ValueError(
            f"{images_parquet}: {len(missing)} image_uid(s) used by the splits are "
            f"absent, e.g. {missing[0]!r}"
        )
    out: dict[str, Image.Image] = {}
    for uid, data in zip(table["image_uid"].astype(str), table["jpg"], strict=True):
        try:
            with Image.open(io.BytesIO(data)) as img:
                out[uid] = img.convert("RGB")
        except Exception as exc:  # PIL raises several unrelated types for bad bytes
            raise ValueError(
                f"{images_parquet}: image_uid {uid!r} is not decodable ({exc})"
            ) from exc
    return out


# --- the VLM read-out ----------------------------------------------------------------------------


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """``[B,T,D]`` hidden states -> ``[B,D]``: the last real token, or the mean over real tokens."""
    mask = attention_mask.to(hidden.dtype)
    if pooling == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "mean":
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
    raise ConfigError(f"ppd.embedding.pooling: expected 'last' or 'mean', got {pooling!r}")


def with_profile(
    vlm: VLM, inputs: dict[str, torch.Tensor], profile_tokens: int
) -> dict[str, torch.Tensor]:
    """Append the VLM's greedy text profile to each prompt, as PPD's extraction script does.

    PPD generates a user profile and keeps the hidden states of the last generation step,
    i.e. of the token that predicted the profile's final token. So each row keeps its profile
    up to its first end-of-turn token and drops the profile's final token; ``last`` pooling then
    reads exactly that state. Image/video tokens are suppressed (they would need pixels).
    """
    tok = vlm.processor.tokenizer
    config = vlm.model.config
    generated = vlm.model.generate(
        **inputs,
        max_new_tokens=profile_tokens,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        suppress_tokens=[config.image_token_id, config.video_token_id],
    )
    prompt_len = inputs["input_ids"].shape[1]
    new = generated[:, prompt_len:]
    ended = (new == tok.eos_token_id).int()
    keep = (ended.cumsum(1) - ended) == 0  # up to and including the first end-of-turn token
    rows = torch.arange(len(new), device=new.device)
    keep[rows, keep.sum(1) - 1] = False  # the final token itself is never fed back in
    out = dict(inputs)
    out["input_ids"] = generated
    out["attention_mask"] = torch.cat([inputs["attention_mask"], keep.long()], dim=1)
    return out


@torch.no_grad()
def embed_prompts(
    vlm: VLM,
    texts: Sequence[str],
    images: Sequence[Sequence[Image.Image]],
    layer: int,
    pooling: str,
    batch_size: int,
    profile_tokens: int = 0,
    desc: str = "vlm embeddings",
) -> torch.Tensor:
    """One pooled hidden state per prompt (float32 on CPU), in the order given.

    With ``profile_tokens > 0`` the VLM first writes its text profile (:func:`with_profile`) and
    the states are read over prompt + profile. The read-out calls the VLM's base model (no
    language-model head: PPD needs the states, not logits, and the 7B head over a long prompt
    would cost more than the rest). ``layer`` indexes the language model's hidden-state tuple
    (0 = input embeddings, -1 = the final, normed layer). Position ids come from the attention
    mask, so a prompt's embedding does not depend on how much left padding its batch needed.
    """
    if len(texts) != len(images):
        raise ValueError(f"{len(texts)} prompts but {len(images)} image lists")
    n_layers = vlm.model.config.text_config.num_hidden_layers
    if not -(n_layers + 1) <= layer <= n_layers:
        raise ConfigError(
            f"ppd.embedding.layer: {layer} is outside the model's hidden states "
            f"(-{n_layers + 1}..{n_layers})"
        )
    dtype = next(vlm.model.parameters()).dtype
    out = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch"):
        batch_texts = list(texts[start : start + batch_size])
        batch_images = [list(imgs) for imgs in images[start : start + batch_size]]
        inputs = vlm.processor(
            text=batch_texts, images=batch_images, return_tensors="pt", padding=True
        )
        inputs = {k: v.to(vlm.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        if profile_tokens > 0:
            inputs = with_profile(vlm, inputs, profile_tokens)
        mask = inputs["attention_mask"]
        inputs["position_ids"] = (mask.cumsum(1) - 1).clamp_min(0)
        outputs = vlm.model.model(**inputs, output_hidden_states=True)
        out.append(pool_hidden(outputs.hidden_states[layer], mask, pooling).float().cpu())
    if not out:
        return torch.zeros(0, vlm.model.config.text_config.hidden_size)
    return torch.cat(out)


def embed_shots(
    vlm: VLM,
    shots: pd.DataFrame,
    images: dict[str, Image.Image],
    emb_cfg: dict[str, Any],
    batch_size: int,
    key: str = "user_id",
    desc: str = "vlm embeddings",
) -> tuple[np.ndarray, torch.Tensor]:
    """Embed each group of ``shots`` (grouped by ``key``, sorted) -> (keys, ``[G,D]``)."""
    keys, texts, image_lists = [], [], []
    image_token = vlm.processor.image_token
    for k, group in shots.groupby(key, sort=True):
        question, uids = build_prompt(group, image_token)
        keys.append(k)
        texts.append(chat_text(vlm.processor, question))
        image_lists.append([images[u] for u in uids])
    emb = embed_prompts(
        vlm,
        texts,
        image_lists,
        int(emb_cfg["layer"]),
        emb_cfg["pooling"],
        batch_size,
        int(emb_cfg["profile_tokens"]),
        desc=desc,
    )
    return np.asarray(keys), emb


def embedding_metadata(vlm: VLM, params: dict[str, Any]) -> dict[str, str]:
    """safetensors metadata: what made the embedding, so a stand-in result is never mistaken."""
    return {
        "method": "ppd",
        "vlm": vlm.name,
        "vlm_stand_in": json.dumps(vlm.stand_in),
        "vlm_config": vlm.config_json,
        "ppd_embedding": json.dumps(params["ppd"]["embedding"], sort_keys=True),
        "seed": str(params["seed"]),
    }


# --- the command ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", required=True, help="splits/ppd/train.parquet (seen users)")
    parser.add_argument(
        "--support", required=True, help="splits/ppd/support.parquet (held-out users' support sets)"
    )
    parser.add_argument("--images", required=True, help="data/clean/images.parquet")
    parser.add_argument(
        "--clip",
        default=None,
        help="models/clip/ (only read when vlm.stand_in.vision_init is 'clip')",
    )
    parser.add_argument(
        "--vlm-stand-in",
        default=None,
        help="models/vlm_stand_in/ (the pre-trained stand-in, when vlm.pretrain.steps > 0)",
    )
    parser.add_argument("--out", required=True, help="embeddings/ppd.safetensors")
    parser.add_argument("--shots", required=True, help="embeddings/ppd_shots.parquet")
    parser.add_argument("--stats", required=True, help="embeddings/ppd_stats.json")


def run(args: argparse.Namespace) -> None:
    params = args.params
    seed, emb_cfg = int(params["seed"]), params["ppd"]["embedding"]
    n_shots = int(emb_cfg["n_shots"])
    seed_everything(seed)
    seen, unseen = read_split(args.train), read_split(args.support)
    overlap = np.intersect1d(seen["user_id"].unique(), unseen["user_id"].unique())
    if len(overlap):
        raise ValueError(
            f"{args.support}: user_id {int(overlap[0])} also has train pairs; "
            "held-out users must be disjoint from train users"
        )
    shots_seen, excl_seen = select_shots(seen, n_shots, emb_cfg["exclude_ties"], seed)
    shots_unseen, excl_unseen = select_shots(unseen, n_shots, emb_cfg["exclude_ties"], seed)
    shots = pd.concat([shots_seen, shots_unseen], ignore_index=True)
    if shots.empty:
        raise ValueError(f"{args.train}, {args.support}: no user has {n_shots} usable pairs")

    vlm = load_vlm(params["vlm"], seed, args.clip or None, args.vlm_stand_in or None)
    images = load_pil_images(args.images, pd.concat([shots["image_w_uid"], shots["image_l_uid"]]))
    user_ids, emb = embed_shots(vlm, shots, images, emb_cfg, int(params["vlm"]["batch_size"]))
    if not torch.isfinite(emb).all():
        raise FloatingPointError("vlm-embeddings: the VLM produced non-finite hidden states")
    save_tensors(
        {"user_ids": torch.as_tensor(user_ids.astype(np.int64)), "emb": emb},
        args.out,
        metadata=embedding_metadata(vlm, params),
    )
    write_parquet(shots, args.shots)

    def reasons(excluded: dict[int, str]) -> dict[str, int]:
        return {r: sum(v == r for v in excluded.values()) for r in sorted(set(excluded.values()))}

    stats = {
        "method": "ppd",
        "vlm": vlm.name,
        "vlm_stand_in": vlm.stand_in,
        "n_shots": n_shots,
        "layer": int(emb_cfg["layer"]),
        "pooling": emb_cfg["pooling"],
        "profile_tokens": int(emb_cfg["profile_tokens"]),
        "dim": int(emb.shape[1]),
        "n_users": {
            "seen": int(shots_seen["user_id"].nunique()),
            "unseen": int(shots_unseen["user_id"].nunique()),
        },
        "excluded": {"seen": reasons(excl_seen), "unseen": reasons(excl_unseen)},
        "excluded_user_ids": {"seen": sorted(excl_seen), "unseen": sorted(excl_unseen)},
        "unseen_user_ids": sorted(int(u) for u in shots_unseen["user_id"].unique()),
    }
    write_json(stats, args.stats)
    log.info(
        "vlm-embeddings: %d seen + %d unseen users embedded (dim %d), %d excluded; %s",
        stats["n_users"]["seen"],
        stats["n_users"]["unseen"],
        stats["dim"],
        len(excl_seen) + len(excl_unseen),
        "STAND-IN VLM" if vlm.stand_in else vlm.name,
    )
