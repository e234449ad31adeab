"""``prefgen lpp-evaluate``: top-K preference prediction on LPP's episodes (LPP Tabs. 1-3).

Each ``split_lpp`` episode gives a user's N_ref liked and N_ref disliked references and a set of
candidates, exactly one of them liked: 1 liked vs 1 disliked (``1v1``: top-1 accuracy, LPP
Tab. 1) or 1 liked vs 3 disliked (``1v3``: top-1 and top-2, LPP Tab. 3). Every method scores
every candidate; an episode is a hit at K when the liked candidate ranks among the top K (ties
broken at random, counted as the expected hit). Methods:

- ``lpp`` and its ablations (each trained variant): Q(S, z) (LPP Eq. 5) of the candidate given
  the user's references, in a seeded shuffled order;
- ``pipe``: r_u = λ_uᵀ φ(c, x) with λ_u fitted (PIPE Eq. 2, the ``lambda`` config) on the
  *same references*: every liked reference preferred to every disliked one, N_ref² pairs;
- ``population``: the K = 1 reward model (PickScore analogue), the same for every user.

φ and the population model are the ``_lpp`` fits (``user_model/pasta_lpp``,
``population_lpp``): PIPE train without any pair that carries an episode candidate's label
(``splits/lpp/user_model_train.parquet``), so no compared model trained on an episode's answer;
- ``clip_score``: 100 · max(cos(image, caption), 0) with the run's CLIP;
- ``oracle`` (synthetic world only): the user's true reward, the Bayes-optimal ranking.

Each candidate is scored with its own caption (LPP's target z = (I, T)). Accuracies are given
for seen users, unseen users (never trained on by LPP), all users, and the seen − unseen gap
(LPP Tab. 2), with percentile bootstrap intervals over users (episodes of a user move
together); the gap resamples seen and unseen users independently. Outputs:
``tables/preference_prediction_topk.{csv,md,tex}`` and the per-episode hits
``lpp/episode_hits.parquet``.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from prefgen.core.io import write_parquet, write_table
from prefgen.core.logging import get_logger
from prefgen.core.seeding import rng, seed_everything
from prefgen.evaluation.bootstrap import bootstrap_means
from prefgen.lpp.data import (
    KIND_SIZE,
    ImageBank,
    episode_items,
    read_episodes,
    read_references,
)
from prefgen.lpp.model import LPPModel, preference
from prefgen.lpp.train_lpp import load_model

log = get_logger(__name__)

COLUMNS = [
    "method",
    "kind",
    "metric",
    "users",
    "n_users",
    "n_episodes",
    "accuracy",
    "ci_low",
    "ci_high",
    "chance",
]
#: (kind, k) cells of the table: LPP Tab. 1 (1v1 top-1) and Tab. 3 (1v3 top-1, top-2).
CELLS = [("1v1", 1), ("1v3", 1), ("1v3", 2)]


# --- LPP scores ----------------------------------------------------------------------------------


def eval_order(seed: int, user_id: int, n: int) -> np.ndarray:
    """A user's reference order at test time: a seeded shuffle, like the training orders."""
    return rng(seed, "lpp", "eval_order", int(user_id)).permutation(n)


@torch.no_grad()
def lpp_scores(
    model: LPPModel,
    references: pd.DataFrame,
    items: pd.DataFrame,
    bank: ImageBank,
    batch_users: int,
    seed: int,
    target_batch: int = 64,
    desc: str = "lpp",
) -> np.ndarray:
    """Q(S_u, z) for every row of ``items`` (``user_id, image_uid, caption``), in row order.

    Users go through in batches: one prefix (prototypes + references) per user, then all the
    user's candidates continue from it.
    """
    refs = dict(iter(references.groupby("user_id", sort=True)))
    out = np.full(len(items), np.nan)
    users = np.unique(items["user_id"].to_numpy())
    missing = [int(u) for u in users if u not in refs]
    if missing:
        raise ValueError(f"LPP scoring: user_id {missing[0]} has candidates but no references")
    rows_of = items.groupby("user_id").indices
    for start in tqdm(range(0, len(users), batch_users), desc=desc, unit="batch"):
        chunk = users[start : start + batch_users]
        texts, images = [], []
        for user in chunk:
            own = refs[user]
            order = eval_order(seed, int(user), len(own))
            texts.append(
                model.reference_text(
                    own["caption"].to_numpy()[order].tolist(),
                    own["liked"].to_numpy()[order].tolist(),
                )
            )
            images.append(bank.many(own["image_uid"].to_numpy()[order]))
        prefix = model.encode_references(texts, images)
        rows = np.concatenate([rows_of[u] for u in chunk])
        owner = np.concatenate([np.full(len(rows_of[u]), i) for i, u in enumerate(chunk)])
        for s in range(0, len(rows), target_batch):
            sel = rows[s : s + target_batch]
            sub = items.iloc[sel]
            logits = model.score_targets(
                prefix,
                torch.from_numpy(owner[s : s + target_batch]),
                sub["caption"].tolist(),
                bank.many(sub["image_uid"]),
            ).logits
            out[sel] = preference(logits).cpu().numpy()
    return out


# --- baselines -----------------------------------------------------------------------------------


@torch.no_grad()
def user_model_scores(
    items: pd.DataFrame,
    references: pd.DataFrame,
    bank: ImageBank,
    clip_dir: str,
    pasta: str,
    population: str,
    lambda_cfg: dict[str, Any],
) -> dict[str, np.ndarray]:
    """``pipe`` (λ fitted on the references), ``population`` and ``clip_score`` per item."""
    from prefgen.user_model.features import ClipEmbedder
    from prefgen.user_model.lambda_fit import fit_lambdas, population_lambda
    from prefgen.user_model.pasta import load_reward_model

    embedder = ClipEmbedder(clip_dir)
    types_model, pop_model = load_reward_model(pasta), load_reward_model(population)
    both = pd.concat(
        [items[["image_uid", "caption"]], references[["image_uid", "caption"]]], ignore_index=True
    )
    keys, inverse = np.unique(both["image_uid"] + "\x00" + both["caption"], return_inverse=True)
    uids = [k.split("\x00", 1)[0] for k in keys]
    caps = [k.split("\x00", 1)[1] for k in keys]
    img = embedder.images(bank.many(uids))
    uniq_caps, cap_inv = np.unique(np.asarray(caps, dtype=object).astype(str), return_inverse=True)
    txt = embedder.captions(list(uniq_caps))[torch.from_numpy(cap_inv.astype(np.int64))]
    phi = types_model.phi(img, txt).double().numpy()
    pop = pop_model.phi(img, txt)[:, 0].double().numpy()
    clip = (100.0 * (img * txt).sum(1).clamp_min(0.0)).double().numpy()
    item_key = inverse[: len(items)]
    ref_key = inverse[len(items) :]

    # λ_u from the references: every liked reference preferred to every disliked one
    user_ids = np.unique(references["user_id"].to_numpy())
    user_pos = {int(u): i for i, u in enumerate(user_ids)}
    dphi, owner = [], []
    for user, rows in references.groupby("user_id").indices.items():
        liked = ref_key[rows[references["liked"].to_numpy()[rows]]]
        disliked = ref_key[rows[~references["liked"].to_numpy()[rows]]]
        diff = phi[liked][:, None, :] - phi[disliked][None, :, :]
        dphi.append(diff.reshape(-1, phi.shape[1]))
        owner.append(np.full(len(liked) * len(disliked), user_pos[int(user)]))
    dphi_all, owner_all = np.concatenate(dphi), np.concatenate(owner)
    l2 = float(lambda_cfg["l2"])
    mu = population_lambda(dphi_all, l2) if lambda_cfg["prior"] == "population" else None
    fit = fit_lambdas(
        dphi_all,
        owner_all,
        len(user_ids),
        l2,
        prior_mean=mu,
        min_informative=int(lambda_cfg["min_informative"]),
        max_iter=int(lambda_cfg["max_iter"]),
        tol=float(lambda_cfg["tol"]),
    )
    lam_rows = np.array([user_pos[int(u)] for u in items["user_id"]])
    pipe = np.einsum("nk,nk->n", phi[item_key], fit.lam[lam_rows])
    log.info(
        "pipe: λ fitted on %d reference pairs of %d users (%d fallback)",
        len(dphi_all),
        len(user_ids),
        int(fit.fallback.sum()),
    )
    return {"pipe": pipe, "population": pop[item_key], "clip_score": clip[item_key]}


def oracle_scores(items: pd.DataFrame, bank: ImageBank, truth_dir: str) -> np.ndarray:
    from prefgen.data.truth import load_truth, oracle_reward

    truth = load_truth(truth_dir)
    return oracle_reward(
        bank.array(items["image_uid"]),
        items["caption"].tolist(),
        items["user_id"].to_numpy(),
        truth,
    )


# --- top-K ---------------------------------------------------------------------------------------


def topk_hits(scores: np.ndarray, liked_index: np.ndarray, k: int) -> np.ndarray:
    """``[E]`` expected hit at K for ``[E, C]`` candidate scores: P(liked ranks ≤ K) with ties
    broken uniformly at random (rank of the liked one is uniform over its tie block)."""
    if np.isnan(scores).any():
        raise ValueError("topk_hits: a candidate has no score")
    liked = scores[np.arange(len(scores)), liked_index][:, None]
    greater = (scores > liked).sum(1)
    equal = (scores == liked).sum(1) - 1  # others tied with the liked candidate
    return np.clip((k - greater) / (equal + 1.0), 0.0, 1.0)


def episode_hits(
    episodes: pd.DataFrame, items: pd.DataFrame, scores: dict[str, np.ndarray]
) -> pd.DataFrame:
    """One row per (method, episode): ``top1`` and (1v3) ``top2`` hits."""
    frames = []
    for method, values in scores.items():
        for kind, size in KIND_SIZE.items():
            eps = episodes[episodes["kind"] == kind].sort_values("episode_id")
            if eps.empty:
                continue
            sub = items[items["kind"] == kind].sort_values(["episode_id", "position"])
            mat = values[sub.index.to_numpy()].reshape(len(eps), size)
            li = eps["liked_index"].to_numpy()
            frame = eps[["episode_id", "user_id", "user_group", "kind"]].assign(
                method=method,
                top1=topk_hits(mat, li, 1),
                top2=topk_hits(mat, li, 2) if size > 2 else np.nan,
            )
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _boot(
    values: np.ndarray, users: np.ndarray, n_boot: int, gen: np.random.Generator
) -> np.ndarray:
    """Bootstrap replicates of the episode mean, resampling users (their episodes together)."""
    return bootstrap_means(
        values,
        users,
        np.zeros(len(values), dtype=np.int64),
        n_boot,
        gen,
        resample_users=True,
        resample_prompts=False,
    )


def accuracy_table(
    hits: pd.DataFrame, methods: list[str], n_boot: int, confidence: float, seed: int
) -> pd.DataFrame:
    """The long table: method × cell × users ∈ {seen, unseen, all, seen-unseen}."""
    alpha = (1.0 - confidence) / 2.0
    rows = []
    for method in methods:
        for kind, k in CELLS:
            sub = hits[(hits["method"] == method) & (hits["kind"] == kind)]
            if sub.empty:
                continue
            col = f"top{k}"
            chance = k / KIND_SIZE[kind]
            boots = {}
            for users in ("seen", "unseen", "all"):
                part = sub if users == "all" else sub[sub["user_group"] == users]
                if part.empty:
                    continue
                gen = rng(seed, "lpp", "bootstrap", method, kind, k, users)
                values, ids = part[col].to_numpy(float), part["user_id"].to_numpy()
                reps = _boot(values, ids, n_boot, gen)
                boots[users] = (float(values.mean()), reps)
                low, high = np.nanquantile(reps, [alpha, 1.0 - alpha])
                rows.append(
                    (
                        method,
                        kind,
                        f"top{k}",
                        users,
                        int(np.unique(ids).size),
                        len(part),
                        float(values.mean()),
                        float(low),
                        float(high),
                        chance,
                    )
                )
            if "seen" in boots and "unseen" in boots:
                gap = boots["seen"][0] - boots["unseen"][0]
                reps = boots["seen"][1] - boots["unseen"][1]
                low, high = np.nanquantile(reps, [alpha, 1.0 - alpha])
                n_u = int(sub["user_id"].nunique())
                rows.append(
                    (
                        method,
                        kind,
                        f"top{k}",
                        "seen_minus_unseen",
                        n_u,
                        len(sub),
                        gap,
                        float(low),
                        float(high),
                        0.0,
                    )
                )
    return pd.DataFrame(rows, columns=COLUMNS)


def sample_users(episodes: pd.DataFrame, max_per_group: int | None, seed: int) -> pd.DataFrame:
    """The episodes of at most ``max_per_group`` users per group (a seeded choice; all when None).

    Every method is scored on the same episodes, so the comparison stays paired.
    """
    if max_per_group is None:
        return episodes
    keep = []
    for group, eps in episodes.groupby("user_group", sort=True):
        users = np.unique(eps["user_id"].to_numpy())
        if len(users) > max_per_group:
            users = rng(seed, "lpp", "evaluate", "users", str(group)).choice(
                users, size=max_per_group, replace=False
            )
        keep.append(users)
    return episodes[episodes["user_id"].isin(np.concatenate(keep))].reset_index(drop=True)


def caption(
    params: dict[str, Any],
    variants: dict[str, dict[str, Any]],
    n_boot: int,
    confidence: float,
    synthetic: bool,
) -> str:
    scale = params.get("scale", "")
    parts = [
        f"Top-K preference prediction on the split_lpp episodes (scale: {scale}; LPP Tabs. "
        "1-3): 1v1 = 1 liked vs 1 disliked, 1v3 = 1 liked vs 3 disliked; users seen/unseen "
        "by LPP training; seen_minus_unseen = the gap (LPP Tab. 2)."
    ]
    for name, meta in variants.items():
        steps = meta["params"]["lpp"]
        label = meta["vlm_label"] if meta.get("stand_in") else meta["params"]["lpp"]["vlm"]["model"]
        parts.append(
            f"{name}: {label}; {steps['stage1']['steps']} + "
            f"{steps['stage2']['steps'] if name != 'lpp_no_prototypes' else 0} steps."
        )
    parts.append("pipe: λ_u fitted on the same references (liked ≻ disliked pairs).")
    if synthetic:
        parts.append("Synthetic world (stand-in data); oracle = the user's true reward.")
    parts.append(f"CI: {confidence:.0%} percentile bootstrap over users ({n_boot} draws).")
    return " ".join(parts)


# --- stage ---------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", required=True, help="splits/lpp/episodes.parquet")
    parser.add_argument("--references", required=True, help="splits/lpp/references.parquet")
    parser.add_argument("--images", required=True, help="data/clean/images.parquet")
    parser.add_argument("--models", nargs="+", required=True, help="models/lpp/<variant>/ dirs")
    parser.add_argument("--clip", required=True, help="models/clip (user-model baselines)")
    parser.add_argument("--pasta", required=True, help="user_model/pasta.safetensors")
    parser.add_argument("--population", required=True, help="user_model/population.safetensors")
    parser.add_argument("--truth", default=None, help="data/truth (synthetic world: the oracle)")
    parser.add_argument(
        "--table", required=True, help="tables/preference_prediction_topk (stem; .csv/.md/.tex)"
    )
    parser.add_argument("--hits", required=True, help="lpp/episode_hits.parquet")
    parser.add_argument("--threads", type=int, default=0)


def run(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    params = args.params
    cfg = params["lpp"]
    seed = int(params["seed"])
    seed_everything(seed)
    ev = cfg["evaluate"]
    all_episodes = read_episodes(args.episodes)
    episodes = sample_users(all_episodes, ev["max_users_per_group"], seed)
    log.info(
        "%d of %d episodes (%d of %d users) evaluated",
        len(episodes),
        len(all_episodes),
        episodes["user_id"].nunique(),
        all_episodes["user_id"].nunique(),
    )
    references = read_references(args.references)
    references = references[references["user_id"].isin(episodes["user_id"])].reset_index(drop=True)
    items = episode_items(episodes)
    bank = ImageBank(args.images, set(items["image_uid"]) | set(references["image_uid"]))

    scores: dict[str, np.ndarray] = {}
    variants: dict[str, dict[str, Any]] = {}
    for model_dir in args.models:
        model, meta = load_model(model_dir, args.clip)
        name = meta["variant"]
        if name in scores:
            raise ValueError(f"{model_dir}: variant {name} given twice")
        meta["vlm_label"] = model_metadata_label(model)
        variants[name] = meta
        scores[name] = lpp_scores(
            model, references, items, bank, int(ev["batch_users"]), seed, desc=name
        )
        del model
    scores.update(
        user_model_scores(
            items, references, bank, args.clip, args.pasta, args.population, params["lambda"]
        )
    )
    if args.truth:
        scores["oracle"] = oracle_scores(items, bank, args.truth)

    hits = episode_hits(episodes, items, scores)
    write_parquet(hits, args.hits)
    table = accuracy_table(hits, list(scores), int(ev["bootstrap"]), float(ev["confidence"]), seed)
    text = caption(
        params, variants, int(ev["bootstrap"]), float(ev["confidence"]), bool(args.truth)
    )
    if ev["max_users_per_group"] is not None:
        text += (
            f" At most {ev['max_users_per_group']} users per group evaluated (seeded "
            "choice; the same episodes for every method)."
        )
    write_table(table, args.table, caption=text)
    summary = table[(table["users"] == "all")].pivot_table(
        index="method", columns=["kind", "metric"], values="accuracy", sort=False
    )
    log.info("top-K accuracy (all users):\n%s", summary.to_string())


def model_metadata_label(model: LPPModel) -> str:
    from prefgen.embeddings.vlm import STAND_IN_LABEL

    return STAND_IN_LABEL if model.stand_in else model.vlm_name
