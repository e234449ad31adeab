"""``prefgen user-embedding-probe``: can a linear classifier tell users apart by their embedding?

PPD's Fig. 2 checks that its VLM user embedding identifies the user: a classifier on frozen
embeddings of few-shot examples predicts which of 300 users gave them, top-K accuracy against
chance. PIPE argues the opposite weakness: a few-shot embedding "may fluctuate wildly based on
the specific few-shot examples drawn". Both claims are about one quantity, how far apart two
*different draws* of the same user land compared with other users, so this probe measures it
the same way for every representation:

* each probed user's pairs are split into ``n_draws`` disjoint folds (:func:`ppd.disjoint_draws`);
* a representation maps one fold to a vector: ``ppd`` embeds the fold's first N pairs with the
  VLM; ``pipe`` refits lambda on the whole fold and takes ``E_u = lambda^T W``; ``pipe_nshot``
  refits lambda on the same N pairs PPD sees (the like-for-like row); ``ppd_label_shuffled``
  (a control) embeds PPD's pairs with preferred and dispreferred swapped at random, because
  identifying a user is not the same as capturing their taste: users also differ in *what they
  ask for*, and a few-shot prompt shows that too;
* leave-one-draw-out: a multinomial logistic regression (L2, standardised inputs) trains on the
  other draws of every user and ranks all users for the held-out draw; top-K accuracy is
  averaged over folds, with a bootstrap-over-users interval, next to chance ``K / n_users``;
* ``ppd_minus_label_shuffled`` rows: PPD's accuracy minus its control's, with a *paired*
  bootstrap interval (the same resampled users for both), so whether the embedding carries
  which image was preferred is read off one interval (:func:`difference_table`).

Output: ``tables/user_embedding_probe.{csv,md,tex}`` with ``vlm_stand_in`` on every row.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from prefgen.core.io import write_table
from prefgen.core.logging import get_logger
from prefgen.core.seeding import derive_seed, rng, seed_everything

log = get_logger(__name__)

PROBE_COLUMNS = [
    "method",
    "representation",
    "vlm_stand_in",
    "n_users",
    "n_draws",
    "pairs_per_draw",
    "dim",
    "k",
    "top_k_accuracy",
    "ci_low",
    "ci_high",
    "chance",
]

#: draws -> ``[n_users, n_draws, D]`` (users in ``draws.user_id`` sorted order).
DrawEmbedder = Callable[[pd.DataFrame], np.ndarray]


def fit_linear_classifier(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS (deterministic for fixed inputs).

    Minimises mean cross-entropy + ``l2/2 * ||W||^2``; the bias is not penalised.
    """
    weight = torch.zeros(x.shape[1], n_classes, dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y)
        loss = loss + 0.5 * l2 * (weight * weight).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach(), bias.detach()


def probe_ranks(emb: np.ndarray, l2: float, max_iter: int) -> np.ndarray:
    """Leave-one-draw-out rank of the true user (0 = top-1) -> ``[n_users, n_draws]``.

    ``emb`` is ``[n_users, n_draws, D]``. For each held-out draw the classifier is trained on the
    remaining draws of all users, inputs standardised with the training draws' mean and std.
    """
    n_users, n_draws, dim = emb.shape
    if n_draws < 2:
        raise ValueError(f"the probe needs at least 2 draws per user, got {n_draws}")
    data = torch.as_tensor(emb, dtype=torch.float64)
    ranks = np.zeros((n_users, n_draws), dtype=np.int64)
    labels = torch.arange(n_users)
    for held in range(n_draws):
        train = data[:, [d for d in range(n_draws) if d != held]].reshape(-1, dim)
        y = labels.repeat_interleave(n_draws - 1)
        mean, std = train.mean(0), train.std(0).clamp_min(1e-8)
        w, b = fit_linear_classifier((train - mean) / std, y, n_users, l2, max_iter)
        logits = ((data[:, held] - mean) / std) @ w + b
        true = logits[labels, labels][:, None]
        # ties count against the true user: a constant embedding scores 0, never 100%
        ranks[:, held] = ((logits > true).sum(1) + (logits == true).sum(1) - 1).numpy()
    return ranks


def topk_table(ranks: np.ndarray, ks: Sequence[int], seed: int, n_boot: int = 1000) -> pd.DataFrame:
    """Top-K accuracy per K with a 95% bootstrap interval over users, and chance K/n_users."""
    n_users = ranks.shape[0]
    gen = rng(seed, "probe", "bootstrap")
    boot = gen.integers(0, n_users, size=(n_boot, n_users))
    rows = []
    for k in ks:
        per_user = (ranks < k).mean(axis=1)
        means = per_user[boot].mean(axis=1)
        rows.append(
            {
                "k": int(k),
                "top_k_accuracy": float(per_user.mean()),
                "ci_low": float(np.quantile(means, 0.025)),
                "ci_high": float(np.quantile(means, 0.975)),
                "chance": min(k, n_users) / n_users,
            }
        )
    return pd.DataFrame(rows)


def difference_table(
    ranks_a: np.ndarray, ranks_b: np.ndarray, ks: Sequence[int], seed: int, n_boot: int = 1000
) -> pd.DataFrame:
    """Top-K accuracy of ``a`` minus ``b`` on the same users, with a paired 95% bootstrap CI.

    Both rank arrays are ``[n_users, n_draws]`` over the same users in the same order; each
    bootstrap sample resamples users once for both (the stream :func:`topk_table` uses), so the
    interval is the difference's own, not two overlapping intervals. ``chance`` is 0.
    """
    if ranks_a.shape != ranks_b.shape:
        raise ValueError(f"paired ranks differ in shape: {ranks_a.shape} vs {ranks_b.shape}")
    n_users = ranks_a.shape[0]
    boot = rng(seed, "probe", "bootstrap").integers(0, n_users, size=(n_boot, n_users))
    rows = []
    for k in ks:
        per_user = (ranks_a < k).mean(axis=1) - (ranks_b < k).mean(axis=1)
        means = per_user[boot].mean(axis=1)
        rows.append(
            {
                "k": int(k),
                "top_k_accuracy": float(per_user.mean()),
                "ci_low": float(np.quantile(means, 0.025)),
                "ci_high": float(np.quantile(means, 0.975)),
                "chance": 0.0,
            }
        )
    return pd.DataFrame(rows)


def representation_ranks(emb: np.ndarray, probe_cfg: dict[str, Any]) -> np.ndarray:
    """The probe's ranks for one representation ``[n_users, n_draws, D]`` (finite values)."""
    if not np.isfinite(emb).all():
        raise FloatingPointError("user-embedding-probe: representation has non-finite values")
    return probe_ranks(emb, float(probe_cfg["l2"]), int(probe_cfg["max_iter"]))


def shape_columns(table: pd.DataFrame, shape: Sequence[int]) -> pd.DataFrame:
    """Prefix ``n_users, n_draws, dim`` of a ``[n_users, n_draws, D]`` representation."""
    table.insert(0, "dim", shape[2])
    table.insert(0, "n_draws", shape[1])
    table.insert(0, "n_users", shape[0])
    return table


def probe_representation(
    emb: np.ndarray, ks: Sequence[int], probe_cfg: dict[str, Any], seed: int
) -> pd.DataFrame:
    """Run the probe on one representation ``[n_users, n_draws, D]``."""
    ranks = representation_ranks(emb, probe_cfg)
    return shape_columns(topk_table(ranks, ks, derive_seed(seed, "probe")), emb.shape)


def shuffle_labels(draws: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The same draws with each pair's winner and loser swapped with probability 1/2 (seeded).

    A representation that names users as well from these as from the real draws identifies
    them by the content of their pairs (their prompts and images), not by their preferences.
    """
    swap = rng(seed, "probe", "label_shuffle").random(len(draws)) < 0.5
    out = draws.copy()
    out.loc[swap, ["image_w_uid", "image_l_uid"]] = draws.loc[
        swap, ["image_l_uid", "image_w_uid"]
    ].to_numpy()
    return out


def draws_to_array(keys: np.ndarray, emb: np.ndarray, n_draws: int) -> np.ndarray:
    """Rows keyed ``(user_id, draw)`` in sorted order -> ``[n_users, n_draws, D]``."""
    n = len(keys)
    if n % n_draws:
        raise ValueError(f"{n} draw embeddings do not split into {n_draws} draws per user")
    return np.asarray(emb).reshape(n // n_draws, n_draws, -1)


# --- the representations -------------------------------------------------------------------------


def ppd_draw_embedder(
    vlm: Any, images: dict[str, Any], emb_cfg: dict[str, Any], batch_size: int
) -> DrawEmbedder:
    """PPD: the VLM embedding of each draw's first ``n_shots`` pairs (the shots PPD would use)."""
    from prefgen.embeddings.ppd import embed_shots

    n_shots = int(emb_cfg["n_shots"])

    def embed(draws: pd.DataFrame) -> np.ndarray:
        shots = draws[draws["rank"] < n_shots].rename(columns={"rank": "shot"})
        n_draws = int(shots["draw"].max()) + 1
        shots = shots.assign(key=shots["user_id"].astype(np.int64) * n_draws + shots["draw"])
        keys, emb = embed_shots(
            vlm, shots, images, emb_cfg, batch_size, key="key", desc="probe: vlm embeddings"
        )
        return draws_to_array(keys, emb.numpy(), n_draws)

    return embed


def pipe_draw_embedder(
    pasta_path: str, features_dir: str, lambda_cfg: dict[str, Any], n_shots: int | None = None
) -> DrawEmbedder:
    """PIPE: ``E = lambda^T W`` (``user_embeddings``' own formula) with lambda refit on each draw.

    Every (user, draw) is fitted as its own user with the ``fit_lambda`` stage's solver and
    settings (``prefgen.user_model.lambda_fit.fit_users``); ``n_shots`` restricts each draw to
    the same first pairs PPD sees, ``None`` uses the whole fold. A draw with too few informative
    pairs gets the solver's documented fallback (the prior mean), as in ``fit_lambda``.
    """
    from prefgen.embeddings.pipe import pipe_embeddings
    from prefgen.user_model.features import FeatureStore
    from prefgen.user_model.lambda_fit import fit_users
    from prefgen.user_model.pairs import build_pairs
    from prefgen.user_model.pasta import load_reward_model

    model = load_reward_model(pasta_path)
    store = FeatureStore.load(features_dir)

    def embed(draws: pd.DataFrame) -> np.ndarray:
        used = draws if n_shots is None else draws[draws["rank"] < n_shots]
        n_draws = int(used["draw"].max()) + 1
        keyed = used.assign(user_id=used["user_id"].astype(np.int64) * n_draws + used["draw"])
        pairs = build_pairs(keyed, store, source="probe draws")
        fit, _ = fit_users(model, pairs, store, lambda_cfg)
        return draws_to_array(pairs.user_ids, pipe_embeddings(fit.lam, model.W).numpy(), n_draws)

    return embed


# --- the command ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", required=True, help="splits/ppd/train.parquet")
    parser.add_argument("--images", required=True, help="data/clean/images.parquet")
    parser.add_argument("--clip", default=None, help="models/clip/ (stand-in vision init)")
    parser.add_argument(
        "--vlm-stand-in", default=None, help="models/vlm_stand_in/ (pre-trained stand-in)"
    )
    parser.add_argument("--features", default=None, help="features/ (PIPE rows)")
    parser.add_argument("--pasta", default=None, help="user_model/pasta.safetensors (PIPE rows)")
    parser.add_argument("--out", required=True, help="tables/user_embedding_probe (stem)")
    parser.add_argument("--draws", required=True, help="the probed draws (parquet), for audit")


def run(args: argparse.Namespace) -> None:
    from prefgen.core.io import write_parquet
    from prefgen.embeddings.ppd import disjoint_draws, load_pil_images, read_split
    from prefgen.embeddings.vlm import load_vlm

    params = args.params
    seed = int(params["seed"])
    emb_cfg, probe_cfg = params["ppd"]["embedding"], params["ppd"]["probe"]
    seed_everything(seed)
    train = read_split(args.train)
    n_draws, n_shots = int(probe_cfg["n_draws"]), int(emb_cfg["n_shots"])
    draws = disjoint_draws(
        train, n_draws, n_shots, emb_cfg["exclude_ties"], seed, int(probe_cfg["max_users"])
    )
    n_users = draws["user_id"].nunique()
    if n_users < 2:
        raise ValueError(
            f"{args.train}: {n_users} user(s) have {n_draws}x{n_shots} usable pairs; "
            "the probe needs at least 2 (lower ppd.probe.n_draws)"
        )
    write_parquet(draws, args.draws)
    fold_size = float(draws.groupby(["user_id", "draw"]).size().mean())
    log.info(
        "probe: %d users x %d disjoint draws (>= %d pairs each, %.1f on average)",
        n_users,
        n_draws,
        n_shots,
        fold_size,
    )

    vlm = load_vlm(params["vlm"], seed, args.clip or None, args.vlm_stand_in or None)
    used = draws[draws["rank"] < n_shots]
    images = load_pil_images(args.images, pd.concat([used["image_w_uid"], used["image_l_uid"]]))
    # method -> (description, pairs per draw, embedder)
    representations: dict[str, tuple[str, float, DrawEmbedder]] = {
        "ppd": (
            f"VLM hidden state (layer {emb_cfg['layer']}, {emb_cfg['pooling']} token "
            f"pooling) of the draw's first {n_shots} pairs",
            n_shots,
            ppd_draw_embedder(vlm, images, emb_cfg, int(params["vlm"]["batch_size"])),
        ),
    }
    if probe_cfg["label_shuffle_control"]:
        representations["ppd_label_shuffled"] = (
            "as ppd, but each pair's preferred/dispreferred images swapped at random (control: "
            "what users asked for, without what they preferred)",
            n_shots,
            lambda d: representations["ppd"][2](shuffle_labels(d, seed)),
        )
    if args.pasta and args.features:
        representations["pipe"] = (
            "E_u = lambda^T W, lambda refit on all pairs of the draw",
            fold_size,
            pipe_draw_embedder(args.pasta, args.features, params["lambda"]),
        )
        representations["pipe_nshot"] = (
            f"E_u = lambda^T W, lambda refit on the draw's first {n_shots} pairs",
            n_shots,
            pipe_draw_embedder(args.pasta, args.features, params["lambda"], n_shots),
        )
    tables = []
    ranks: dict[str, np.ndarray] = {}
    shapes: dict[str, tuple[int, ...]] = {}

    def add(method: str, description: str, pairs_per_draw: float, table: pd.DataFrame) -> None:
        table.insert(0, "pairs_per_draw", pairs_per_draw)
        table.insert(0, "vlm_stand_in", vlm.stand_in if method.startswith("ppd") else False)
        table.insert(0, "representation", description)
        table.insert(0, "method", method)
        tables.append(table)

    for method, (description, pairs_per_draw, embedder) in representations.items():
        emb = embedder(draws)
        ranks[method], shapes[method] = representation_ranks(emb, probe_cfg), emb.shape
        table = topk_table(ranks[method], probe_cfg["top_k"], derive_seed(seed, "probe"))
        add(method, description, pairs_per_draw, shape_columns(table, emb.shape))
        top = table.iloc[-1]
        log.info(
            "probe %s: top-%d accuracy %.3f [%.3f, %.3f] (chance %.3f)",
            method,
            top["k"],
            top["top_k_accuracy"],
            top["ci_low"],
            top["ci_high"],
            top["chance"],
        )
    if "ppd_label_shuffled" in ranks:
        diff = difference_table(
            ranks["ppd"],
            ranks["ppd_label_shuffled"],
            probe_cfg["top_k"],
            derive_seed(seed, "probe"),
        )
        add(
            "ppd_minus_label_shuffled",
            "ppd minus ppd_label_shuffled on the same users (paired bootstrap CI; > 0: the "
            "embedding carries which image was preferred)",
            n_shots,
            shape_columns(diff, shapes["ppd"]),
        )
        top = diff.iloc[-1]
        log.info(
            "probe ppd - label-shuffled: top-%d %+.3f [%.3f, %.3f]",
            top["k"],
            top["top_k_accuracy"],
            top["ci_low"],
            top["ci_high"],
        )
    out = pd.concat(tables, ignore_index=True)[PROBE_COLUMNS]
    caption = (
        f"User-classification probe (PPD Fig. 2): top-K accuracy of a linear classifier "
        f"naming the user of a held-out draw among {n_users} users ({n_draws} disjoint "
        f"draws each, leave-one-draw-out; 95% bootstrap CI over users); chance = K/users."
    )
    if "ppd_label_shuffled" in ranks:
        caption += (
            " ppd_minus_label_shuffled: accuracy difference with a paired bootstrap CI (chance 0)."
        )
    if vlm.stand_in:
        caption += f" PPD rows: {vlm.label}."
    write_table(out, args.out, caption=caption)
