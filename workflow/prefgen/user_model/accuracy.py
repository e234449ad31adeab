"""``prefgen preference-accuracy``: how well each user model predicts held-out choices (PIPE §3.2).

PIPE reports 64.1% (PIPE user model) vs 56.8% (PickScore) on its per-user 9:1 Pick-a-Pic
re-split, ties excluded from the test. This stage computes the same table for our run, on the
PIPE test split (``split = seen``: every test user also has training pairs):

- ``pipe``: r_u = λ_uᵀφ (Eq. 1) with the fitted λ_u;
- ``population``: the K = 1 reward model trained on everyone's pairs (the PickScore analogue);
- ``mean_lambda``: every user gets the population λ (no personalisation, same φ);
- ``best_type``: each user's single most likely type (argmax_k of π_k ∏ σ(Δφ_k) on their
  training pairs): PASTA's discrete types without PIPE's continuous mixture;
- ``oracle`` (synthetic world only): the user's true reward; its accuracy is the Bayes limit.

Accuracy is pooled over test pairs (a prediction exactly at 0 counts as half); confidence
intervals resample *users* with replacement (``preference_accuracy.bootstrap`` draws, the same
draws for every method so intervals are comparable). The fraction of the population→oracle
gap that PIPE closes, and a paired bootstrap interval for pipe − population, go to
``user_model/preference_accuracy.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from prefgen.core.io import atomic_path, read_json, write_json, write_table
from prefgen.core.logging import get_logger
from prefgen.core.seeding import rng
from prefgen.user_model.features import FeatureStore
from prefgen.user_model.imageio import load_images
from prefgen.user_model.lambda_fit import lambda_matrix, read_lambdas
from prefgen.user_model.pairs import PairSet, build_pairs, read_split
from prefgen.user_model.pasta import load_reward_model, user_loglik

log = get_logger(__name__)

COLUMNS = ["method", "split", "n_users", "n_pairs", "accuracy", "ci_low", "ci_high"]


@torch.no_grad()
def item_phi(model: Any, pairs: PairSet, store: FeatureStore) -> np.ndarray:
    img, txt = pairs.item_features(store)
    return model.phi(img, txt).double().numpy()


def correct_from_margin(margin: np.ndarray) -> np.ndarray:
    """1 for a positive winner-minus-loser margin, 0.5 at exactly 0, 0 otherwise."""
    return np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0))


def read_test_pairs(test_path: str | Path, store: FeatureStore, user_ids: np.ndarray) -> PairSet:
    """The PIPE test pairs every accuracy is measured on: ties excluded, as PIPE §3.2 does."""
    test_df = read_split(test_path)
    test_df = test_df[~test_df["is_tie"].astype(bool)].reset_index(drop=True)
    return build_pairs(test_df, store, source=str(test_path), user_ids=user_ids)


def best_types(model: Any, train: PairSet, store: FeatureStore, log_pi: np.ndarray) -> np.ndarray:
    """``[U]`` each training user's MAP type: argmax_k log π_k + Σ_n log σ(Δφ_k)."""
    img, txt = train.item_features(store)
    with torch.no_grad():
        ll = user_loglik(model.phi(img, txt), train).numpy()
    return np.argmax(ll + log_pi[None, :], axis=1)


def user_bootstrap(
    correct: np.ndarray, user: np.ndarray, n_users: int, draws: int, seed: int, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Per-user (correct, count) sums and the bootstrap accuracy draws ``[draws]`` per method.

    ``correct`` is ``[M,P]`` (methods × pairs). Users are resampled with replacement through a
    multinomial count matrix shared by all methods.
    """
    counts = np.bincount(user, minlength=n_users).astype(np.float64)
    sums = np.stack([np.bincount(user, weights=c, minlength=n_users) for c in correct])
    present = np.flatnonzero(counts > 0)
    gen = rng(seed, "preference_accuracy", "bootstrap")
    w = gen.multinomial(len(present), np.full(len(present), 1.0 / len(present)), size=draws)
    acc = (w @ sums[:, present].T) / (w @ counts[present])[:, None]  # [draws, M]
    return acc, sums


def accuracy_table(
    correct: dict[str, np.ndarray],
    user: np.ndarray,
    n_users: int,
    split: str,
    draws: int,
    seed: int,
    level: float,
) -> tuple[pd.DataFrame, np.ndarray]:
    names = list(correct)
    mat = np.stack([correct[m] for m in names])
    boot, _ = user_bootstrap(mat, user, n_users, draws, seed)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2], axis=0)
    n_u = int((np.bincount(user, minlength=n_users) > 0).sum())
    rows = [
        {
            "method": m,
            "split": split,
            "n_users": n_u,
            "n_pairs": int(mat.shape[1]),
            "accuracy": float(mat[i].mean()),
            "ci_low": float(lo[i]),
            "ci_high": float(hi[i]),
        }
        for i, m in enumerate(names)
    ]
    return pd.DataFrame(rows, columns=COLUMNS), boot


def history_figure(
    correct: dict[str, np.ndarray],
    test_user: np.ndarray,
    n_train: np.ndarray,
    path: str | Path,
    title: str,
) -> pd.DataFrame:
    """Accuracy against each user's number of training pairs (log2 bins), one line per method."""
    hist = n_train[test_user]
    edges = 2 ** np.arange(0, int(np.ceil(np.log2(max(2, hist.max() + 1)))) + 1)
    b = np.clip(np.digitize(hist, edges) - 1, 0, len(edges) - 2)
    rows = []
    for m, c in correct.items():
        for i in np.unique(b):
            sel = b == i
            rows.append(
                {
                    "method": m,
                    "bin_low": int(edges[i]),
                    "bin_high": int(edges[i + 1] - 1),
                    "n_pairs": int(sel.sum()),
                    "n_users": len(np.unique(test_user[sel])),
                    "accuracy": float(c[sel].mean()),
                }
            )
    df = pd.DataFrame(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for m in correct:
        d = df[df["method"] == m]
        ax.plot(np.sqrt(d["bin_low"] * (d["bin_high"] + 1)), d["accuracy"], marker="o", label=m)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training pairs of the user (log2 bins)")
    ax.set_ylabel("test preference accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return df


def evaluate(
    features: str | Path,
    pasta: str | Path,
    population: str | Path,
    lambdas: str | Path,
    lambda_summary: str | Path,
    train_path: str | Path,
    test_path: str | Path,
    params: dict[str, Any],
    seed: int,
    truth_dir: str | Path | None = None,
    images: str | Path | None = None,
) -> dict[str, Any]:
    """Score every method on the PIPE test pairs; returns correct-vectors and context."""
    store = FeatureStore.load(features)
    lam_df = read_lambdas(lambdas)
    user_ids = lam_df.index.to_numpy(dtype=np.int64)
    if not (np.diff(user_ids) > 0).all():
        order = np.argsort(user_ids)
        user_ids = user_ids[order]
    test = read_test_pairs(test_path, store, user_ids)
    train = build_pairs(read_split(train_path), store, source=str(train_path), user_ids=user_ids)
    pasta_model = load_reward_model(pasta)
    pop_model = load_reward_model(population)
    phi = item_phi(pasta_model, test, store)
    dphi = phi[test.win] - phi[test.lose]
    lam = lambda_matrix(lam_df, user_ids, where=str(lambdas))
    mu = np.asarray(read_json(lambda_summary)["population_lambda"], dtype=np.float64)
    pop = item_phi(pop_model, test, store)[:, 0]
    meta = read_json(Path(pasta).with_suffix(".json"))
    k_best = best_types(pasta_model, train, store, np.log(np.maximum(meta["pi"], 1e-12)))
    correct = {
        "pipe": correct_from_margin((dphi * lam[test.user]).sum(1)),
        "population": correct_from_margin(pop[test.win] - pop[test.lose]),
        "mean_lambda": correct_from_margin(dphi @ mu),
        "best_type": correct_from_margin(dphi[np.arange(test.n_pairs), k_best[test.user]]),
    }
    if truth_dir is not None:
        from prefgen.data.truth import load_truth, oracle_reward

        truth = load_truth(truth_dir)
        pix = load_images(images, test.item_uid)
        uw, ul = test.user_ids[test.user], test.user_ids[test.user]
        rw = oracle_reward(pix[test.win], test.item_caption[test.win], uw, truth)
        rl = oracle_reward(pix[test.lose], test.item_caption[test.lose], ul, truth)
        correct["oracle"] = correct_from_margin(np.asarray(rw) - np.asarray(rl))
    n_train = train.pairs_per_user()
    return {"correct": correct, "test": test, "n_train": n_train}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features", required=True)
    parser.add_argument("--pasta", required=True)
    parser.add_argument("--population", required=True)
    parser.add_argument("--lambdas", required=True, help="user_model/lambda.parquet")
    parser.add_argument("--lambda-summary", required=True, help="user_model/lambda.json")
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--truth", default=None, help="data/truth/ (synthetic world only)")
    parser.add_argument("--images", default=None, help="data/clean/images.parquet (oracle)")
    parser.add_argument("--table", required=True, help="tables/preference_accuracy.csv")
    parser.add_argument("--figure", required=True, help="figures/accuracy_vs_history.png")
    parser.add_argument("--summary", required=True, help="user_model/preference_accuracy.json")


def run(args: argparse.Namespace) -> None:
    params, seed = args.params["preference_accuracy"], int(args.params["seed"])
    scale = args.params.get("scale", "")
    if args.truth is not None and args.images is None:
        raise ValueError("preference-accuracy: --truth needs --images (the oracle scores pixels)")
    res = evaluate(
        args.features,
        args.pasta,
        args.population,
        args.lambdas,
        args.lambda_summary,
        args.train,
        args.test,
        params,
        seed,
        args.truth,
        args.images,
    )
    correct, test = res["correct"], res["test"]
    table, boot = accuracy_table(
        correct,
        test.user,
        test.n_users,
        "seen",
        int(params["bootstrap"]),
        seed,
        float(params["ci_level"]),
    )
    names = list(correct)
    acc = table.set_index("method")["accuracy"]
    diff = boot[:, names.index("pipe")] - boot[:, names.index("population")]
    level = float(params["ci_level"])
    summary: dict[str, Any] = {
        "scale": scale,
        "n_test_pairs": test.n_pairs,
        "pipe_minus_population": float(acc["pipe"] - acc["population"]),
        "pipe_minus_population_ci": np.quantile(diff, [(1 - level) / 2, (1 + level) / 2]).tolist(),
        "ci_overlap_pipe_population": bool(
            table.set_index("method").loc["pipe", "ci_low"]
            <= table.set_index("method").loc["population", "ci_high"]
        ),
    }
    if "oracle" in acc:
        gap = acc["oracle"] - acc["population"]
        summary["gap_closed"] = float((acc["pipe"] - acc["population"]) / gap) if gap > 0 else None
        summary["gap_population_to_oracle"] = float(gap)
    write_json(summary, args.summary)
    stand_in = (
        " Stand-in models (tiny CLIP, small reward heads) on the synthetic world."
        if scale in ("smoke", "mini")
        else ""
    )
    gap_text = (
        f" PIPE closes {summary['gap_closed']:.1%} of the population→oracle gap."
        if summary.get("gap_closed") is not None
        else ""
    )
    caption = (
        f"Preference accuracy on the PIPE per-user 9:1 test split (ties excluded), "
        f"{int(params['bootstrap'])} user-bootstrap {level:.0%} CIs.{gap_text}{stand_in}"
    )
    write_table(table, Path(args.table).with_suffix(""), caption=caption)
    history_figure(
        correct,
        test.user,
        res["n_train"],
        args.figure,
        f"Accuracy vs training history ({scale or 'run'})" + (" - stand-in" if stand_in else ""),
    )
    log.info("preference accuracy:\n%s\n%s", table.to_string(index=False), summary)
