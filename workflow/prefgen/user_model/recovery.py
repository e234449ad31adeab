"""``prefgen user-model-recovery``: does the fitted user model recover the planted truth?

Synthetic world only (it needs ``data/truth``). On the distinct (image, caption) items of the
PIPE test split:

1. learned types are matched to planted types by the Hungarian algorithm
   (``scipy.optimize.linear_sum_assignment``) on the Pearson correlation between the learned
   type reward φ_k and the planted type reward r*_j (``type_reward_corr``);
2. for users with at least ``min_pairs`` training pairs, λ_u is compared with λ*_u:
   ``lambda_corr_matched``: the matched coordinates of λ_u, clipped at 0 and normalised to the
   simplex (λ* lives there), correlated across users with λ*_u, per planted type;
   ``lambda_corr_projected``: scale-free alternative: φ is regressed on r* (φ ≈ r* A), so
   r_u = λ_uᵀφ ≈ (A λ_u)ᵀ r* and A λ_u (normalised to sum 1) are the planted-type weights the
   fitted model implies; correlated with λ*_u per planted type;
   ``user_reward_corr_median``: per user, correlation over items between λ_uᵀφ and the true
   r*_u, median over the users whose dominant planted type is that row's type.

The ``all`` row pools the types (flattened λ correlations, median reward correlation over all
users, mean matched type correlation).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment

from prefgen.core.io import atomic_path
from prefgen.core.logging import get_logger
from prefgen.user_model.features import FeatureStore
from prefgen.user_model.imageio import load_images
from prefgen.user_model.lambda_fit import lambda_matrix, read_lambdas
from prefgen.user_model.pairs import build_pairs, read_split
from prefgen.user_model.pasta import load_reward_model

log = get_logger(__name__)

COLUMNS = [
    "planted_type",
    "planted_name",
    "learned_type",
    "type_reward_corr",
    "lambda_corr_matched",
    "lambda_corr_projected",
    "user_reward_corr_median",
    "n_users",
]


def corr_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation between the columns of ``a [N,p]`` and ``b [N,q]`` -> ``[p,q]``."""
    za = (a - a.mean(0)) / np.where(a.std(0) > 0, a.std(0), 1.0)
    zb = (b - b.mean(0)) / np.where(b.std(0) > 0, b.std(0), 1.0)
    return za.T @ zb / len(a)


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def to_simplex(w: np.ndarray) -> np.ndarray:
    """Clip at 0 and normalise rows to sum 1 (uniform where nothing is positive)."""
    w = np.clip(w, 0.0, None)
    s = w.sum(1, keepdims=True)
    return np.where(s > 0, w / np.where(s > 0, s, 1.0), 1.0 / w.shape[1])


def recovery_table(
    phi: np.ndarray,
    truth_r: np.ndarray,
    lam: np.ndarray,
    lam_true: np.ndarray,
    type_names: list[str],
) -> pd.DataFrame:
    """The recovery table from item rewards and (already filtered) user weights.

    ``phi [I,K]`` learned and ``truth_r [I,K*]`` planted type rewards on the same items;
    ``lam [U,K]``, ``lam_true [U,K*]`` for the same users.
    """
    C = corr_matrix(phi, truth_r)  # [K, K*]
    rows_l, cols_t = linear_sum_assignment(-C)
    match = dict(zip(cols_t.tolist(), rows_l.tolist(), strict=True))  # planted -> learned
    K_true = truth_r.shape[1]
    matched = np.zeros((len(lam), K_true))
    for j, k in match.items():
        matched[:, j] = lam[:, k]
    matched = to_simplex(matched)
    A, *_ = np.linalg.lstsq(truth_r - truth_r.mean(0), phi - phi.mean(0), rcond=None)  # [K*,K]
    projected = to_simplex(lam @ A.T)
    r_user = (phi - phi.mean(0)) @ lam.T  # [I,U]
    r_true = (truth_r - truth_r.mean(0)) @ lam_true.T
    user_corr = np.array([_corr(r_user[:, u], r_true[:, u]) for u in range(len(lam))])
    dominant = lam_true.argmax(1)
    rows = []
    for j in range(K_true):
        sel = dominant == j
        rows.append(
            {
                "planted_type": str(j),
                "planted_name": type_names[j],
                "learned_type": str(match[j]) if j in match else "",
                "type_reward_corr": float(C[match[j], j]) if j in match else float("nan"),
                "lambda_corr_matched": _corr(matched[:, j], lam_true[:, j]),
                "lambda_corr_projected": _corr(projected[:, j], lam_true[:, j]),
                "user_reward_corr_median": float(np.nanmedian(user_corr[sel]))
                if sel.any()
                else float("nan"),
                "n_users": int(sel.sum()),
            }
        )
    rows.append(
        {
            "planted_type": "all",
            "planted_name": "all",
            "learned_type": "",
            "type_reward_corr": float(np.mean(C[rows_l, cols_t])),
            "lambda_corr_matched": _corr(matched.ravel(), lam_true.ravel()),
            "lambda_corr_projected": _corr(projected.ravel(), lam_true.ravel()),
            "user_reward_corr_median": float(np.nanmedian(user_corr)),
            "n_users": len(lam),
        }
    )
    return pd.DataFrame(rows, columns=COLUMNS)


def compute(
    features: str | Path,
    pasta: str | Path,
    lambdas: str | Path,
    test_path: str | Path,
    truth_dir: str | Path,
    images: str | Path,
    min_pairs: int,
) -> pd.DataFrame:
    from prefgen.data.truth import load_truth, type_rewards

    store = FeatureStore.load(features)
    truth = load_truth(truth_dir)
    test = build_pairs(read_split(test_path), store, source=str(test_path))
    model = load_reward_model(pasta)
    img, txt = test.item_features(store)
    with torch.no_grad():
        phi = model.phi(img, txt).double().numpy()
    truth_r = np.asarray(type_rewards(load_images(images, test.item_uid), test.item_caption, truth))
    lam_df = read_lambdas(lambdas)
    keep = lam_df[(lam_df["n_pairs"] >= min_pairs) & ~lam_df["fallback"]].index.to_numpy()
    if len(keep) < 3:
        raise ValueError(
            f"user-model-recovery: only {len(keep)} users have >= {min_pairs} "
            "training pairs; lower preference_accuracy.recovery_min_pairs"
        )
    lam = lambda_matrix(lam_df, keep, where=str(lambdas))
    return recovery_table(phi, truth_r, lam, truth.lambdas(keep), list(truth.type_names))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features", required=True)
    parser.add_argument("--pasta", required=True)
    parser.add_argument("--lambdas", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--truth", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--table", required=True, help="tables/user_model_recovery.csv")


def run(args: argparse.Namespace) -> None:
    params: dict[str, Any] = args.params["preference_accuracy"]
    table = compute(
        args.features,
        args.pasta,
        args.lambdas,
        args.test,
        args.truth,
        args.images,
        int(params["recovery_min_pairs"]),
    )
    with atomic_path(Path(args.table)) as tmp:
        table.to_csv(tmp, index=False)
    log.info("user model recovery:\n%s", table.to_string(index=False))
