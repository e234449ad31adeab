"""``prefgen lpp-prototypes``: how users attend to the prototypes (LPP Fig. 3 in kind).

LPP Fig. 3 shows, per user, the attention A (Eq. 2) from the tokens of one target image to the
prototypes, with the same target appended to every user's history and five random reorderings
of each history; users with similar taste share a pattern. We measure the same thing and turn
the figure into numbers:

- for each analysed user, each of ``n_orders`` seeded reorderings of the references and each of
  ``n_targets`` probe targets (the same images for every user), the attention of the target's
  image tokens to the L_p prototype positions at decoder layer ``layer``, averaged over heads
  and image tokens: its sum is the *attention mass* on the prototypes, its normalised version
  the user's *prototype pattern* (a distribution over prototypes);
- a user's pattern is the mean over orders and targets; patterns are centred across users (the
  component every user shares says nothing about taste) and compared by cosine similarity;
- on the synthetic world, users are labelled by their planted dominant type
  (``data/truth/users.parquet``): the table reports the mean similarity of same-type and of
  different-type user pairs, their gap and a permutation p-value (type labels shuffled), and,
  as a yardstick, the similarity of one user's patterns across reorderings.

Outputs: ``tables/lpp_prototypes.{csv,md,tex}`` (one row), ``lpp/prototype_patterns.parquet``
(per user: group, dominant type, mass, pattern) and ``figures/lpp_prototypes.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from prefgen.core.io import atomic_path, write_parquet, write_table
from prefgen.core.logging import get_logger
from prefgen.core.seeding import rng, seed_everything
from prefgen.lpp.data import ImageBank, episode_items, read_episodes, read_references
from prefgen.lpp.model import LPPModel
from prefgen.lpp.train_lpp import load_model

log = get_logger(__name__)


def probe_targets(items: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` distinct candidate images (with their captions), one set for every user."""
    uniq = items.drop_duplicates("image_uid").sort_values("image_uid").reset_index(drop=True)
    pick = rng(seed, "lpp", "prototypes", "targets").choice(
        len(uniq), size=min(n, len(uniq)), replace=False
    )
    return uniq.iloc[np.sort(pick)][["image_uid", "caption"]].reset_index(drop=True)


@torch.no_grad()
def prototype_attention(
    model: LPPModel,
    references: pd.DataFrame,
    users: np.ndarray,
    targets: pd.DataFrame,
    bank: ImageBank,
    n_orders: int,
    layer: int,
    seed: int,
    batch_users: int,
) -> np.ndarray:
    """``[U, n_orders, n_targets, L_p]`` attention of target image tokens to each prototype.

    Averaged over heads and over the target's image tokens, at decoder layer ``layer``.
    """
    if model.n_prototypes == 0:
        raise ValueError("prototype analysis: the model has no prototypes (lpp_no_prototypes?)")
    n_layers = len(model.decoder.layers)
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"lpp.prototypes.layer {layer} outside the decoder's {n_layers} layers")
    refs = dict(iter(references.groupby("user_id", sort=True)))
    lp, nt = model.n_prototypes, len(targets)
    out = np.zeros((len(users), n_orders, nt, lp))
    t_images = bank.many(targets["image_uid"])
    t_caps = targets["caption"].tolist()
    for start in tqdm(range(0, len(users), batch_users), desc="prototype attention", unit="batch"):
        chunk = users[start : start + batch_users]
        texts, images = [], []
        for user in chunk:
            own = refs[int(user)]
            gen = rng(seed, "lpp", "prototypes", "orders", int(user))
            for _ in range(n_orders):
                order = gen.permutation(len(own))
                texts.append(
                    model.reference_text(
                        own["caption"].to_numpy()[order].tolist(),
                        own["liked"].to_numpy()[order].tolist(),
                    )
                )
                images.append(bank.many(own["image_uid"].to_numpy()[order]))
        prefix = model.encode_references(texts, images)
        n_rows = len(texts)
        owner = torch.arange(n_rows).repeat_interleave(nt)
        res = model.score_targets(
            prefix, owner, t_caps * n_rows, t_images * n_rows, output_attentions=True
        )
        attn = res.attentions[layer].float()  # [N, heads, q, kv]
        to_proto = attn[..., :lp].mean(1)  # [N, q, L_p] (prototypes are the first kv columns)
        mask = res.image_mask.to(to_proto.dtype)[..., None]  # [N, q, 1]
        per_target = (to_proto * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # [N, L_p]
        out[start : start + len(chunk)] = (
            per_target.reshape(len(chunk), n_orders, nt, lp).cpu().numpy()
        )
    return out


def centred_cosine(x: np.ndarray) -> np.ndarray:
    """Cosine similarity of rows after removing the mean row."""
    z = x - x.mean(0, keepdims=True)
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    return z @ z.T


def type_gap(sim: np.ndarray, types: np.ndarray) -> tuple[float, float]:
    """Mean similarity of same-type and of different-type pairs (off-diagonal)."""
    same = types[:, None] == types[None, :]
    off = ~np.eye(len(types), dtype=bool)
    s = sim[same & off]
    d = sim[~same & off]
    return (float(s.mean()) if s.size else np.nan), (float(d.mean()) if d.size else np.nan)


def analyse(
    attn: np.ndarray, types: np.ndarray | None, n_perm: int, seed: int
) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray]:
    """Summary numbers, per-user patterns ``[U, L_p]``, mass ``[U]`` and similarity ``[U, U]``."""
    mass_raw = attn.sum(-1)  # [U, O, T]
    dist = attn / np.maximum(mass_raw[..., None], 1e-12)
    patterns = dist.mean((1, 2))
    mass = mass_raw.mean((1, 2))
    sim = centred_cosine(patterns)
    n_users, n_orders = attn.shape[0], attn.shape[1]
    # order consistency: one user's patterns across reorderings vs other users'
    per_order = dist.mean(2).reshape(n_users * n_orders, -1)
    order_sim = centred_cosine(per_order)
    owner = np.repeat(np.arange(n_users), n_orders)
    same_user = owner[:, None] == owner[None, :]
    off = ~np.eye(len(owner), dtype=bool)
    summary: dict[str, Any] = {
        "n_users": n_users,
        "n_prototypes": attn.shape[-1],
        "n_orders": n_orders,
        "n_targets": attn.shape[2],
        "attention_mass": float(mass.mean()),
        "attention_mass_sd_users": float(mass.std()),
        "within_user_similarity": float(order_sim[same_user & off].mean())
        if n_orders > 1
        else np.nan,
        "between_user_similarity": float(order_sim[~same_user].mean()),
    }
    if types is not None:
        same, diff = type_gap(sim, types)
        gen = rng(seed, "lpp", "prototypes", "permutation")
        null = np.array(
            [np.subtract(*type_gap(sim, gen.permutation(types))) for _ in range(n_perm)]
        )
        gap = same - diff
        summary.update(
            {
                "n_types": int(np.unique(types).size),
                "same_type_similarity": same,
                "different_type_similarity": diff,
                "similarity_gap": gap,
                "permutation_p": float((1 + np.sum(null >= gap)) / (1 + n_perm)),
                "n_permutations": n_perm,
            }
        )
    return summary, patterns, mass, sim


def figure(
    patterns: np.ndarray,
    sim: np.ndarray,
    types: np.ndarray | None,
    users: np.ndarray,
    summary: dict[str, Any],
    path: str | Path,
    label: str,
) -> None:
    """(a) users × prototypes patterns, (b) user × user similarity, both sorted by type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.lexsort((users, types)) if types is not None else np.arange(len(users))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), gridspec_kw={"width_ratios": [1, 1.2]})
    im = axes[0].imshow(patterns[order], aspect="auto", cmap="viridis", interpolation="nearest")
    axes[0].set_xlabel("prototype")
    axes[0].set_ylabel("user (sorted by planted type)" if types is not None else "user")
    axes[0].set_title("(a) attention over prototypes (normalised)")
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    im = axes[1].imshow(
        sim[np.ix_(order, order)], cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest"
    )
    title = "(b) centred cosine similarity of patterns"
    if types is not None:
        bounds = np.flatnonzero(np.diff(types[order])) + 0.5
        for b in bounds:
            for ax in axes[1:]:
                ax.axhline(b, color="k", lw=0.6)
                ax.axvline(b, color="k", lw=0.6)
            axes[0].axhline(b, color="w", lw=0.6)
        title += (
            f"\nsame type {summary['same_type_similarity']:.3f} vs different "
            f"{summary['different_type_similarity']:.3f} "
            f"(p={summary['permutation_p']:.3f})"
        )
    axes[1].set_title(title, fontsize=9)
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    fig.suptitle(f"LPP prototypes: {label}", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="models/lpp/lpp/")
    parser.add_argument("--episodes", required=True, help="splits/lpp/episodes.parquet")
    parser.add_argument("--references", required=True, help="splits/lpp/references.parquet")
    parser.add_argument("--images", required=True, help="data/clean/images.parquet")
    parser.add_argument("--clip", default=None, help="models/clip (stand-in vision init)")
    parser.add_argument(
        "--truth-users",
        default=None,
        help="data/truth/users.parquet (synthetic world: dominant types)",
    )
    parser.add_argument("--table", required=True, help="tables/lpp_prototypes (stem)")
    parser.add_argument("--patterns", required=True, help="lpp/prototype_patterns.parquet")
    parser.add_argument("--figure", required=True, help="figures/lpp_prototypes.png")
    parser.add_argument("--threads", type=int, default=0)


def run(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    params = args.params
    cfg = params["lpp"]["prototypes"]
    seed = int(params["seed"])
    seed_everything(seed)
    episodes = read_episodes(args.episodes)
    references = read_references(args.references)
    groups = episodes.drop_duplicates("user_id").set_index("user_id")["user_group"]
    users = np.sort(groups.index.to_numpy())
    if len(users) > int(cfg["max_users"]):
        users = np.sort(
            rng(seed, "lpp", "prototypes", "users").choice(
                users, size=int(cfg["max_users"]), replace=False
            )
        )
    types = None
    if args.truth_users:
        truth = pd.read_parquet(args.truth_users).set_index("user_id")
        unknown = np.setdiff1d(users, truth.index.to_numpy())
        if len(unknown):
            raise KeyError(f"{args.truth_users}: user_id {int(unknown[0])} has no planted type")
        types = truth.loc[users, "dominant_type"].to_numpy()
    items = episode_items(episodes)
    targets = probe_targets(items, int(cfg["n_targets"]), seed)
    refs = references[references["user_id"].isin(users)]
    bank = ImageBank(args.images, set(refs["image_uid"]) | set(targets["image_uid"]))
    model, meta = load_model(args.model, args.clip or None)
    model.vlm.set_attn_implementation("eager")  # attention weights are only returned by eager
    attn = prototype_attention(
        model,
        refs,
        users,
        targets,
        bank,
        int(cfg["n_orders"]),
        int(cfg["layer"]),
        seed,
        int(cfg["batch_users"]),
    )
    summary, patterns, mass, sim = analyse(attn, types, int(cfg["n_permutations"]), seed)
    summary = {"variant": meta["variant"], "layer": int(cfg["layer"]), **summary}
    from prefgen.embeddings.vlm import STAND_IN_LABEL

    label = STAND_IN_LABEL if model.stand_in else model.vlm_name
    write_table(
        pd.DataFrame([summary]),
        args.table,
        caption=(
            f"LPP prototype analysis (LPP Fig. 3 in kind), model: {label}. Attention of the probe "
            "targets' image tokens to the prototypes; patterns centred across users, cosine "
            "similarity; same/different planted type on the synthetic world, permutation p-value."
        ),
    )
    frame = pd.DataFrame(
        {"user_id": users, "user_group": groups.loc[users].to_numpy(), "attention_mass": mass}
    )
    if types is not None:
        frame["dominant_type"] = types
    for j in range(patterns.shape[1]):
        frame[f"prototype_{j}"] = patterns[:, j]
    write_parquet(frame, args.patterns)
    figure(patterns, sim, types, users, summary, args.figure, label)
    log.info("prototype analysis: %s", summary)
