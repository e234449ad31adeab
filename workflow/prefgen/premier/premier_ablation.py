"""``premier-ablation``: Premier's own metrics, with and without the dispersion loss (Premier §5.3).

Premier's Fig. 8 shows that without the dispersion loss different users get near-identical
images for the same prompt. We measure that and the paper's other axes on the same grid of
(user, prompt) cells for three variants: ``base`` (no personalization: every user gets the same
image, the floor of cross-user diversity), ``premier`` (the trained method) and
``premier_no_dispersion`` (the same training with both dispersion weights at 0):

- ``diversity``: for one prompt and one seed *shared by every user*, the mean pairwise
  distance ``1 − cos`` between the mini-CLIP image embeddings of different users' images.
  Premier uses LPIPS, whose AlexNet/VGG weights cannot be downloaded here (offline); our
  frozen mini CLIP is the stand-in feature space. Per cell (user u, prompt p) the value is u's
  mean distance to the other users' images for p, whose mean over cells is the mean pairwise
  distance.
- ``clip_score``: text consistency (CLIPScore with the run's CLIP).
- ``oracle`` / ``pipe``: preference alignment (the user's true reward; the PIPE user model).
- ``bytes_per_user``: storage of one user (Premier reports 61 KB for FLUX).

Every mean has a two-way (users × prompts) bootstrap CI (``prefgen.evaluation.bootstrap``);
``premier − premier_no_dispersion`` rows give the paired difference with its CI.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from prefgen.core.logging import get_logger
from prefgen.evaluation.bootstrap import two_way_ci

log = get_logger(__name__)

ABLATION_COLUMNS = [
    "variant",
    "metric",
    "users",
    "prompts",
    "n",
    "mean",
    "ci_low",
    "ci_high",
    "note",
]


def cross_user_distances(
    emb: torch.Tensor, user_ids: np.ndarray, prompt_ids: np.ndarray
) -> np.ndarray:
    """Per image: mean ``1 − cos`` to the images of *other* users for the same prompt.

    ``emb`` is ``[N, D]`` (normalised inside). Each (user, prompt) must appear once, and every
    prompt needs at least two users (an error otherwise: a prompt with one user has no
    cross-user distance).
    """
    emb = torch.nn.functional.normalize(emb.double(), dim=-1)
    user_ids, prompt_ids = np.asarray(user_ids), np.asarray(prompt_ids)
    cells = pd.DataFrame({"u": user_ids, "p": prompt_ids})
    if cells.duplicated().any():
        row = int(np.flatnonzero(cells.duplicated().to_numpy())[0])
        raise ValueError(f"cross_user_distances: (user, prompt) repeated at row {row}")
    out = np.empty(len(user_ids))
    for p in np.unique(prompt_ids):
        idx = np.flatnonzero(prompt_ids == p)
        if idx.size < 2:
            raise ValueError(f"cross_user_distances: prompt {p} has images of only one user")
        e = emb[torch.from_numpy(idx)]
        dist = (1.0 - e @ e.T).clamp_min(0.0)
        out[idx] = (dist.sum(1) / (idx.size - 1)).numpy()  # diagonal is 0
    return out


def metric_rows(
    variant: str,
    metric: str,
    values: np.ndarray,
    users: np.ndarray,
    prompts: np.ndarray,
    n_boot: int,
    seed: int,
    confidence: float,
    note: str = "",
) -> dict:
    """One table row: mean of ``values`` over (user, prompt) cells with its bootstrap CI."""
    from prefgen.core.seeding import rng

    ci = two_way_ci(
        values, users, prompts, n_boot, rng(seed, "premier_ablation", variant, metric), confidence
    )
    return {
        "variant": variant,
        "metric": metric,
        "users": ci.n_users,
        "prompts": ci.n_prompts,
        "n": ci.n,
        "mean": ci.estimate,
        "ci_low": ci.low,
        "ci_high": ci.high,
        "note": note,
    }


def direction_distances(cond: Any, user_ids: list[int], text_shape: tuple[int, int]) -> np.ndarray:
    """Per user: mean root-mean-square distance of its empty-prompt modulation directions
    (shared and distinct, concatenated) to the other users' — what the dispersion loss acts on."""
    tokens, own = cond.user_tokens(user_ids)
    if not own.all():
        raise ValueError(f"users {np.asarray(user_ids)[~own][:5]} have no Premier embedding")
    with torch.no_grad():
        empty = torch.zeros(len(user_ids), *text_shape, dtype=tokens.dtype)
        shared, distinct = cond.modulator(empty, tokens)
        z = torch.cat([shared.flatten(1), distinct.flatten(1)], 1).double()
        d = torch.cdist(z, z) / z.shape[1] ** 0.5
    return (d.sum(1) / (len(user_ids) - 1)).numpy()


def ablation_grid(eval_set: pd.DataFrame, n_users: int, n_prompts: int, seed: int) -> pd.DataFrame:
    """Seen users × prompts of the evaluation set, with ONE seed per prompt shared by all users
    (so images of one prompt differ only through the user: cross-user diversity)."""
    from prefgen.core.seeding import derive_seed, rng

    seen = np.sort(eval_set.loc[eval_set["user_group"] == "seen", "user_id"].unique())
    if len(seen) < 2:
        raise ValueError("premier-ablation: the evaluation set needs at least two seen users")
    users = np.sort(seen[rng(seed, "premier_ablation", "users").permutation(len(seen))[:n_users]])
    prompts = (
        eval_set[["prompt_id", "caption"]]
        .drop_duplicates("prompt_id")
        .sort_values("prompt_id")
        .head(n_prompts)
    )
    return pd.DataFrame(
        [
            {
                "user_id": int(u),
                "prompt_id": int(pid),
                "caption": cap,
                "seed": derive_seed(seed, "premier_ablation", int(pid)) % 2**31,
            }
            for pid, cap in zip(prompts["prompt_id"], prompts["caption"], strict=True)
            for u in users
        ]
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--foundation", required=True, help="pipeline folder or hub id")
    parser.add_argument("--premier", required=True, help="adapters/premier/final.json")
    parser.add_argument(
        "--no-dispersion", required=True, help="adapters/premier_no_dispersion/final.json"
    )
    parser.add_argument("--init", required=True, help="embeddings/premier_init.safetensors")
    parser.add_argument("--eval-set", required=True, help="splits/eval_set.parquet")
    parser.add_argument("--run-dir", required=True, help="results/<run_name>/ (user model, CLIP)")
    parser.add_argument("--truth", default=None, help="data/truth/ (oracle judge; synthetic only)")
    parser.add_argument("--out", required=True, help="tables/premier_ablation.csv")
    parser.add_argument("--threads", type=int, default=1)


def run(args: argparse.Namespace) -> None:
    import time

    from prefgen.core.io import load_tensors, read_json, write_table
    from prefgen.evaluation.judge_registry import build_judges
    from prefgen.evaluation.judge_types import JudgeContext, checked_scores
    from prefgen.generation.adapters import UserEmbeddings, build_conditioning
    from prefgen.generation.models import load_pipeline
    from prefgen.generation.sample import generate
    from prefgen.premier.user_tokens import bytes_per_user

    torch.set_num_threads(max(1, args.threads))
    p = args.params
    cfg, seed = p["premier"]["ablation"], int(p["seed"])
    t0 = time.perf_counter()
    grid = ablation_grid(
        pd.read_parquet(args.eval_set), int(cfg["users"]), int(cfg["prompts"]), seed
    )
    pipe = load_pipeline(args.foundation)
    finals = {
        "premier": read_json(args.premier),
        "premier_no_dispersion": read_json(args.no_dispersion),
    }
    for name, final in finals.items():
        if not final.get("complete") or final["method_config"].get("conditioning") != "premier":
            raise ValueError(f"{name}: not a complete Premier training run")
    cond = build_conditioning(
        pipe.unet, finals["premier"]["method_config"], UserEmbeddings.load(args.init)
    )
    cond.eval()
    judge_names = (["oracle"] if args.truth else []) + ["pipe", "clip_score"]
    ctx = JudgeContext(
        run_dir=Path(args.run_dir), truth_dir=Path(args.truth) if args.truth else None
    )
    judges = build_judges(judge_names, "core", ctx)
    embedder = ctx.cache["user_model"].embedder  # the run's CLIP, loaded by the pipe judge

    users = grid["user_id"].to_numpy(np.int64)
    prompts = grid["prompt_id"].to_numpy(np.int64)
    values: dict[tuple[str, str], np.ndarray] = {}
    text_shape = None
    for variant in ("base", "premier", "premier_no_dispersion"):
        extra = None
        if variant != "base":
            final = finals[variant]
            last = max(final["checkpoints"], key=lambda c: c["step"])
            adapter_json = args.premier if variant == "premier" else args.no_dispersion
            cond.load_adapter_state_dict(load_tensors(Path(adapter_json).parent / last["path"]))

            def extra(user_id: int, guidance: bool) -> Any:
                return cond.pipeline_inputs(user_id, None, guidance)

        images, _ = generate(pipe, grid, p["sample"], extra)
        pil = [Image.fromarray(im) for im in images]
        captions = grid["caption"].tolist()
        for name, judge in judges.items():
            values[(variant, name)] = checked_scores(
                name, judge.score(pil, captions, users), len(pil)
            )
        values[(variant, "diversity")] = cross_user_distances(embedder.images(pil), users, prompts)
        if variant != "base":
            if text_shape is None:
                from prefgen.generation.models import encode_text

                text_shape = tuple(encode_text(pipe, [""])["prompt_embeds"].shape[1:])
            uniq = sorted(set(users.tolist()))
            per_user = dict(zip(uniq, direction_distances(cond, uniq, text_shape), strict=True))
            values[(variant, "direction_distance")] = np.array([per_user[u] for u in users])
        log.info("%s: %d images scored", variant, len(images))

    n_boot, conf = int(p["evaluate"]["bootstrap"]), float(p["evaluate"]["confidence"])
    notes = {
        "diversity": "mean pairwise 1-cos of mini-CLIP image embeddings across users, same "
        "prompt and seed (LPIPS stand-in: its weights are not available offline)",
        "clip_score": "text consistency: CLIPScore with the run's CLIP",
        "oracle": "preference alignment: the user's true reward (synthetic world)",
        "pipe": "preference alignment: PIPE user model lambda_u . phi",
        "direction_distance": "mean RMS distance between users' empty-prompt modulation "
        "directions (what the dispersion loss separates)",
    }
    rows = []
    for (variant, metric), v in values.items():
        rows.append(
            metric_rows(variant, metric, v, users, prompts, n_boot, seed, conf, notes[metric])
        )
    for metric in notes:
        if ("premier", metric) in values and ("premier_no_dispersion", metric) in values:
            diff = values[("premier", metric)] - values[("premier_no_dispersion", metric)]
            rows.append(
                metric_rows(
                    "premier - premier_no_dispersion",
                    metric,
                    diff,
                    users,
                    prompts,
                    n_boot,
                    seed,
                    conf,
                    "paired difference (same users, prompts, seeds)",
                )
            )
    spec = cond.spec
    n_train = len(cond.table.user_ids)
    for label, nbytes, note in (
        (
            "premier",
            bytes_per_user(spec.user_tokens, spec.user_dim),
            f"training user: [{spec.user_tokens}, {spec.user_dim}] float32 embedding "
            "(Premier reports 61 KB on FLUX)",
        ),
        (
            "premier (new user)",
            4 * n_train,
            f"new user: {n_train} float32 combination weights over the training users",
        ),
    ):
        rows.append(
            {
                "variant": label,
                "metric": "bytes_per_user",
                "users": np.nan,
                "prompts": np.nan,
                "n": np.nan,
                "mean": float(nbytes),
                "ci_low": np.nan,
                "ci_high": np.nan,
                "note": note,
            }
        )
    table = pd.DataFrame(rows, columns=ABLATION_COLUMNS)
    table["scale"] = p["scale"]
    write_table(
        table,
        Path(args.out).with_suffix(""),
        caption=(
            "Premier's own metrics with and without the dispersion loss (Premier Tab. 2 / Fig. 8 "
            "in "
            "kind) on seen users x prompts, one seed per prompt shared by all users. Mean with a "
            "two-way (users x prompts) bootstrap CI. Premier modulates FLUX MM-DiT; here its "
            "directions are added to the text tokens of each cross-attention layer of our "
            f"SDXL-architecture {p['scale']} stand-in (docs/decisions/25-premier-unet-host.md)."
        ),
    )
    log.info(
        "premier-ablation: done in %.1f s\n%s",
        time.perf_counter() - t0,
        table.drop(columns="note").to_string(index=False),
    )
