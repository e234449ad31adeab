"""``prefgen fit-lambda``: each user's type weights λ_u by ridge logistic regression (PIPE Eq. 2).

For user u with training pairs (winner w_n, loser l_n) and Δφ_n = φ(c_n, w_n) − φ(c_n, l_n),

    f_u(λ) = Σ_n log(1 + exp(−λᵀ Δφ_n)) + (α/2) ‖λ − μ‖²,

PIPE's Eq. 2 plus a ridge term (α = ``lambda.l2``) that keeps users with a handful of pairs
finite; μ is 0 or, with ``lambda.prior: population``, the population λ (one logistic regression
pooled over every user's pairs: the single user the whole population looks like), so a user
with little data is shrunk towards everyone else instead of towards "no preference".

All users are solved in ONE batched computation: users are grouped into buckets of similar pair
counts (padded to the next power of two, so padding wastes < 2×), and each bucket runs damped
Newton iterations with batched matrix products and a batched Cholesky solve; a per-user
backtracking line search keeps every step a descent step. There is no Python loop over users.

Fallback (documented, flagged, never NaN): a user with fewer than ``lambda.min_informative``
*informative* pairs (non-tie pairs with Δφ ≠ 0; ties carry a randomised label, PIPE §3.2) gets
λ_u = μ and ``fallback = True``. Ties still enter the fit of the other users, as in PIPE.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from prefgen.core.io import write_json, write_parquet
from prefgen.core.logging import get_logger
from prefgen.user_model.features import FeatureStore
from prefgen.user_model.pairs import PairSet, build_pairs, read_split
from prefgen.user_model.pasta import load_reward_model

log = get_logger(__name__)


@dataclass
class LambdaFit:
    """Per-user solution of Eq. 2 (rows follow the ``n_users`` user indices)."""

    lam: np.ndarray  # [U,K]
    n_pairs: np.ndarray  # [U]
    n_informative: np.ndarray  # [U]
    fallback: np.ndarray  # [U] bool
    loss: np.ndarray  # [U] regularised loss f_u at λ_u
    grad_norm: np.ndarray  # [U] ‖∇f_u(λ_u)‖ (0 for fallback users)
    iterations: int
    prior_mean: np.ndarray  # [K] or [U,K]


def regularised_loss(x: np.ndarray, lam: np.ndarray, l2: float,
                     prior: np.ndarray | None = None) -> float:
    """f(λ) for one user's ``x = Δφ`` rows ``[n,K]`` (float64; the bench's reference)."""
    prior = np.zeros_like(lam) if prior is None else prior
    margins = x @ lam
    return float(np.logaddexp(0.0, -margins).sum() + 0.5 * l2 * np.sum((lam - prior) ** 2))


def _check_inputs(dphi: np.ndarray, user: np.ndarray, n_users: int,
                  row_names: np.ndarray | None) -> None:
    if dphi.ndim != 2:
        raise ValueError(f"fit_lambdas: Δφ must be [pairs, K], got shape {dphi.shape}")
    if len(user) != len(dphi):
        raise ValueError(f"fit_lambdas: {len(dphi)} Δφ rows but {len(user)} user indices")
    bad = ~np.isfinite(dphi).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        name = row_names[i] if row_names is not None else f"row {i}"
        raise ValueError(f"fit_lambdas: non-finite Δφ for {name} ({int(bad.sum())} pairs); "
                         "check the features of its images")
    if len(user) and (user.min() < 0 or user.max() >= n_users):
        raise ValueError(f"fit_lambdas: user indices must lie in [0, {n_users})")


def _buckets(counts: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(padded length, user indices) groups: power-of-two pair-count buckets of users with pairs."""
    users = np.flatnonzero(counts > 0)
    length = np.maximum(1, 2 ** np.ceil(np.log2(np.maximum(counts[users], 1))).astype(np.int64))
    return [(int(L), users[length == L]) for L in np.unique(length)]


def _newton_bucket(X: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, l2: float,
                   max_iter: int, tol: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Damped Newton on a padded bucket ``X [B,L,K]``; returns (λ, loss, grad norm, iterations).

    Each iteration reads X three times (margins, gradient, Hessian). The line search costs no
    extra pass: margins are linear in the step, m(t) = m + t·(m_full − m), so a user whose full
    step fails the Armijo test backtracks on vectors of length L only. Users converge at
    different iterations; once a quarter of the working set has, the converged rows leave it
    (one copy of the remaining rows), so late iterations read only the users still moving.
    """
    B, _, K = X.shape
    eye = torch.eye(K, dtype=X.dtype)

    def margins(Xw: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return torch.einsum("blk,bk->bl", Xw, lam)

    def loss_from(m: torch.Tensor, lam: torch.Tensor, maskw: torch.Tensor,
                  muw: torch.Tensor) -> torch.Tensor:
        return (F.softplus(-m) * maskw).sum(1) + 0.5 * l2 * ((lam - muw) ** 2).sum(1)

    def grad_from(Xw: torch.Tensor, m: torch.Tensor, lam: torch.Tensor, maskw: torch.Tensor,
                  muw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.sigmoid(-m) * maskw  # = -d softplus(-m)/dm on real rows, 0 on padding
        g = -torch.bmm(Xw.transpose(1, 2), p.unsqueeze(-1)).squeeze(-1) + l2 * (lam - muw)
        return g, p

    lam_all = mu.clone()
    rows = torch.arange(B)  # the working set: users still iterating, and their data
    Xw, maskw, muw, lam = X, mask, mu, lam_all.clone()
    m = margins(Xw, lam)
    f = loss_from(m, lam, maskw, muw)
    g, p = grad_from(Xw, m, lam, maskw, muw)
    active = torch.ones(B, dtype=torch.bool)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        w = p * (1.0 - p) * maskw
        H = torch.bmm(Xw.transpose(1, 2) * w.unsqueeze(1), Xw) + l2 * eye
        step = -torch.cholesky_solve(g.unsqueeze(-1), torch.linalg.cholesky(H)).squeeze(-1)
        step = step * active.unsqueeze(1)
        decrement = -(g * step).sum(1)  # Newton decrement², >= 0 since H is positive definite
        active &= decrement > 2 * tol * (1.0 + f.abs())
        if not bool(active.any()):
            break
        m_full = margins(Xw, lam + step)
        t = torch.ones(len(rows), dtype=X.dtype)
        for _ in range(30):  # per-user backtracking on the margins, vectorised over users
            m_t = m + t.unsqueeze(1) * (m_full - m)
            f_t = loss_from(m_t, lam + t.unsqueeze(1) * step, maskw, muw)
            ok = (f_t <= f - 1e-4 * t * decrement) | ~active
            if bool(ok.all()):
                break
            t = torch.where(ok, t, 0.5 * t)
        ok = (f_t <= f) & active  # never accept an ascent (rounding at the optimum)
        lam = torch.where(ok.unsqueeze(1), lam + t.unsqueeze(1) * step, lam)
        m = torch.where(ok.unsqueeze(1), m_t, m)
        f = torch.where(ok, f_t, f)
        active &= ok
        if int(active.sum()) < 0.75 * len(rows):  # shrink the working set to the movers
            lam_all[rows] = lam
            keep = active.nonzero().squeeze(1)
            rows, Xw, maskw, muw = rows[keep], Xw[keep], maskw[keep], muw[keep]
            lam, m, f, active = lam[keep], m[keep], f[keep], active[keep]
            if not len(rows):
                break
        g, p = grad_from(Xw, m, lam, maskw, muw)
    lam_all[rows] = lam
    m = margins(X, lam_all)
    g, _ = grad_from(X, m, lam_all, mask, mu)
    return lam_all, loss_from(m, lam_all, mask, mu), g.norm(dim=1), it


def fit_lambdas(dphi: np.ndarray, user: np.ndarray, n_users: int, l2: float,
                prior_mean: np.ndarray | None = None, informative: np.ndarray | None = None,
                min_informative: int = 1, max_iter: int = 50, tol: float = 1e-10,
                row_names: np.ndarray | None = None) -> LambdaFit:
    """Solve Eq. 2 (+ ridge towards ``prior_mean``) for every user at once.

    ``dphi [P,K]`` are winner-minus-loser type rewards, ``user [P]`` each pair's user index in
    ``[0, n_users)``; ``informative [P]`` marks pairs that count towards ``min_informative``
    (default: all pairs with Δφ ≠ 0). ``prior_mean`` is ``[K]`` (shared) or ``[U,K]``.
    ``row_names`` name pairs in error messages (e.g. ``ranking_id 123``). The stopping rule
    (Newton decrement below ``tol``·(1+f)) bounds each user's loss excess by about ``tol``
    relative.
    """
    dphi = np.asarray(dphi, dtype=np.float64)
    user = np.asarray(user, dtype=np.int64)
    _check_inputs(dphi, user, n_users, row_names)
    if l2 <= 0:
        raise ValueError(f"fit_lambdas: l2 must be > 0 (got {l2}); without it a user whose pairs "
                         "are separable has no finite λ")
    K = dphi.shape[1]
    mu = np.zeros((n_users, K)) if prior_mean is None else \
        np.broadcast_to(np.asarray(prior_mean, dtype=np.float64), (n_users, K)).copy()
    nonzero = np.abs(dphi).sum(1) > 0
    informative = nonzero if informative is None else (np.asarray(informative, bool) & nonzero)
    n_pairs = np.bincount(user, minlength=n_users)
    n_inf = np.bincount(user, weights=informative, minlength=n_users).astype(np.int64)
    fallback = n_inf < int(min_informative)

    lam = mu.copy()
    loss = np.zeros(n_users)
    gnorm = np.zeros(n_users)
    fit_user = ~fallback
    keep = fit_user[user]
    xs, us = (dphi, user) if keep.all() else (dphi[keep], user[keep])
    if len(us) > 1 and (np.diff(us) < 0).any():
        # a stable sort of small unsigned keys is numpy's O(P) radix sort
        key = us.astype(np.uint16) if n_users <= np.iinfo(np.uint16).max else us
        order = np.argsort(key, kind="stable")
        xs, us = xs[order], us[order]
    tdtype = torch.float64
    counts = np.bincount(us, minlength=n_users)
    starts = np.concatenate([[0], np.cumsum(counts)])
    iters = 0
    for L, members in _buckets(counts):
        # gather each member's rows into a zero-padded [B, L, K] block (vectorised)
        lens = counts[members]
        row = np.repeat(np.arange(len(members)), lens)
        col = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        src = np.repeat(starts[members], lens) + col
        X = torch.zeros((len(members), L, K), dtype=tdtype)
        mask = torch.zeros((len(members), L), dtype=tdtype)
        flat = torch.from_numpy(row * L + col)  # each pair's slot in the padded block
        X.view(-1, K).index_copy_(0, flat, torch.from_numpy(xs[src]).to(tdtype))
        mask.view(-1)[flat] = 1.0
        lam_b, loss_b, g_b, it = _newton_bucket(X, mask, torch.from_numpy(mu[members]).to(tdtype),
                                                l2, max_iter, tol)
        lam[members] = lam_b.numpy()
        loss[members] = loss_b.numpy()
        gnorm[members] = g_b.numpy()
        iters = max(iters, it)
    # fallback users: λ = μ, loss reported at μ on their own pairs (ties included)
    if fallback.any():
        fb_pairs = fallback[user]
        sp = np.logaddexp(0.0, -(dphi[fb_pairs] * mu[user[fb_pairs]]).sum(1))
        loss[fallback] = np.bincount(user[fb_pairs], weights=sp, minlength=n_users)[fallback]
    if not np.isfinite(lam).all():  # pragma: no cover - guarded by the inputs and l2 > 0
        raise FloatingPointError("fit_lambdas: non-finite λ; this is a bug")
    return LambdaFit(lam, n_pairs, n_inf, fallback, loss, gnorm, iters,
                     np.asarray(prior_mean) if prior_mean is not None else np.zeros(K))


# --------------------------------------------------------------------------- from a reward model
@torch.no_grad()
def pair_dphi(model: Any, pairs: PairSet, store: FeatureStore) -> np.ndarray:
    """``[P,K]`` Δφ = φ(winner) − φ(loser) for every pair (float64)."""
    img, txt = pairs.item_features(store)
    phi = model.phi(img, txt).double()
    return (phi[torch.from_numpy(pairs.win)] - phi[torch.from_numpy(pairs.lose)]).numpy()


def population_lambda(dphi: np.ndarray, l2: float) -> np.ndarray:
    """μ: the one λ that best explains everyone's pairs pooled (same solver, one 'user')."""
    fit = fit_lambdas(dphi, np.zeros(len(dphi), dtype=np.int64), 1, l2)
    return fit.lam[0]


def fit_users(model: Any, pairs: PairSet, store: FeatureStore, params: dict[str, Any],
              row_names: np.ndarray | None = None) -> tuple[LambdaFit, np.ndarray]:
    """λ for every user of ``pairs`` (Eq. 2 with the configured prior); returns (fit, μ).

    This is the public entry point for other stages: LPP-style reference pairs or any user's
    own pairs go in as a :class:`PairSet`, λ comes out in ``pairs.user_ids`` order.
    """
    dphi = pair_dphi(model, pairs, store)
    l2 = float(params["l2"])
    mu = population_lambda(dphi, l2) if params["prior"] == "population" else \
        np.zeros(dphi.shape[1])
    fit = fit_lambdas(dphi, pairs.user, pairs.n_users, l2, prior_mean=mu,
                      informative=~pairs.is_tie, min_informative=int(params["min_informative"]),
                      max_iter=int(params["max_iter"]), tol=float(params["tol"]),
                      row_names=row_names)
    return fit, mu


def lambda_table(user_ids: np.ndarray, fit: LambdaFit) -> pd.DataFrame:
    df = pd.DataFrame({"user_id": np.asarray(user_ids, dtype=np.int64)})
    for k in range(fit.lam.shape[1]):
        df[f"lambda_{k}"] = fit.lam[:, k]
    df["n_pairs"] = fit.n_pairs.astype(np.int64)
    df["n_informative"] = fit.n_informative.astype(np.int64)
    df["fallback"] = fit.fallback.astype(bool)
    return df


def read_lambdas(path: str | Path) -> pd.DataFrame:
    """``lambda.parquet`` indexed by user_id, with the λ columns in type order."""
    df = pd.read_parquet(path).set_index("user_id")
    return df


def lambda_matrix(df: pd.DataFrame, user_ids: np.ndarray, where: str = "users") -> np.ndarray:
    """``[N,K]`` λ rows for ``user_ids`` (error naming an unknown user)."""
    cols = sorted((c for c in df.columns if c.startswith("lambda_")), key=lambda c: int(c[7:]))
    ids = np.asarray(user_ids, dtype=np.int64)
    pos = df.index.get_indexer(ids)
    if (pos < 0).any():
        bad = ids[pos < 0][0]
        raise KeyError(f"{where}: user_id {bad} has no fitted λ (not in PIPE train)")
    return df[cols].to_numpy(dtype=np.float64)[pos]


# --------------------------------------------------------------------------- stage
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features", required=True)
    parser.add_argument("--model", required=True, help="user_model/pasta.safetensors")
    parser.add_argument("--train", required=True, help="splits/pipe/train.parquet")
    parser.add_argument("--out", required=True, help="user_model/lambda.parquet")
    parser.add_argument("--summary", required=True, help="user_model/lambda.json")
    parser.add_argument("--threads", type=int, default=0)


def run(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    params = args.params["lambda"]
    t0 = time.time()
    store = FeatureStore.load(args.features)
    train = read_split(args.train)
    pairs = build_pairs(train, store, source=str(args.train))
    model = load_reward_model(args.model)
    names = np.array([f"{args.train} ranking_id {r}" for r in train["ranking_id"]])
    fit, mu = fit_users(model, pairs, store, params, row_names=names)
    write_parquet(lambda_table(pairs.user_ids, fit), args.out)
    summary = {"population_lambda": mu.tolist(), "l2": float(params["l2"]),
               "prior": params["prior"], "min_informative": int(params["min_informative"]),
               "n_users": pairs.n_users, "n_pairs": pairs.n_pairs,
               "n_fallback": int(fit.fallback.sum()), "newton_iterations": fit.iterations,
               "max_grad_norm": float(fit.grad_norm.max()) if len(fit.grad_norm) else 0.0,
               "fallback_rule": "users with fewer than min_informative non-tie pairs with "
                                "non-zero Δφ get λ = population λ (prior mean)",
               "seconds": round(time.time() - t0, 2)}
    write_json(summary, args.summary)
    log.info("fit_lambda: %d users (%d fallback), %d Newton iterations, max ‖∇f‖ %.2e, %.2fs",
             pairs.n_users, summary["n_fallback"], fit.iterations, summary["max_grad_norm"],
             summary["seconds"])
