"""``prefgen fit-lambda``: each user's type weights λ_u by ridge logistic regression (PIPE Eq. 2).

For user u with training pairs (winner w_n, loser l_n) and Δφ_n = φ(c_n, w_n) − φ(c_n, l_n),

    f_u(λ) = Σ_n log(1 + exp(−λᵀ Δφ_n)) + (α/2) ‖λ − μ‖²,

PIPE's Eq. 2 plus a ridge term (α = ``lambda.l2``) that keeps users with a handful of pairs
finite; μ is 0 or, with ``lambda.prior: population``, the population λ (one logistic regression
pooled over every user's pairs: the single user the whole population looks like), so a user
with little data is shrunk towards everyone else instead of towards "no preference".

All users are solved in ONE batched computation: damped Newton with a per-user backtracking
line search (every step a descent step), no Python loop over users. The pairs are sorted by
user once (numpy's O(P) radix sort for up to 65,536 users) and kept unpadded; each per-user sum
an iteration needs is one sparse product over the sorted pairs (``_Pairs``): margins T·λ,
gradient sums S_q·Δφ and Hessian sums S_w·X₂ over the K(K+1)/2 pair products X₂, computed once.
With K ≈ 5 each user's Newton system is tiny and the work is streaming the pairs through
memory, so the design minimises passes and bytes: no padding (pair counts are heavy-tailed),
no per-bucket gathers, one sigmoid per pair serving loss, gradient and Hessian, a line search
that re-reads only the pairs of users whose full step fails, compaction of the working set to
the users still moving, and float32 pair products for the Hessian while a rounding bound shows
that they keep Newton's local convergence (error factor <= 0.05 per step). Loss and gradient,
hence the optimum and the stopping test, are float64; when the bound fails the products are
float64 too.

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
import scipy.sparse as sp
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


def regularised_loss(
    x: np.ndarray, lam: np.ndarray, l2: float, prior: np.ndarray | None = None
) -> float:
    """f(λ) for one user's ``x = Δφ`` rows ``[n,K]`` (float64; the bench's reference)."""
    prior = np.zeros_like(lam) if prior is None else prior
    margins = x @ lam
    return float(np.logaddexp(0.0, -margins).sum() + 0.5 * l2 * np.sum((lam - prior) ** 2))


def _check_inputs(
    dphi: np.ndarray, user: np.ndarray, n_users: int, row_names: np.ndarray | None
) -> np.ndarray:
    """Validate the inputs; returns Σ_k |Δφ_nk| per pair (one pass: finiteness and Δφ ≠ 0)."""
    if dphi.ndim != 2:
        raise ValueError(f"fit_lambdas: Δφ must be [pairs, K], got shape {dphi.shape}")
    if len(user) != len(dphi):
        raise ValueError(f"fit_lambdas: {len(dphi)} Δφ rows but {len(user)} user indices")
    with np.errstate(over="ignore"):  # a huge but finite row may overflow its sum: checked below
        row_abs = np.abs(dphi) @ np.ones(dphi.shape[1])
    if not np.isfinite(row_abs).all():  # the per-row scan only runs to name the culprit
        bad = ~np.isfinite(dphi).all(axis=1)
        if bad.any():  # (otherwise a finite row only overflowed its sum)
            i = int(np.flatnonzero(bad)[0])
            name = row_names[i] if row_names is not None else f"row {i}"
            raise ValueError(
                f"fit_lambdas: non-finite Δφ for {name} ({int(bad.sum())} pairs); "
                "check the features of its images"
            )
    if len(user) and (user.min() < 0 or user.max() >= n_users):
        raise ValueError(f"fit_lambdas: user indices must lie in [0, {n_users})")
    return row_abs


_MAX_PRODUCTS = 136  # K(K+1)/2 up to K = 16 precomputes the pair products; larger K uses T
_HESS_CHUNK = 64  # pairs per float32 partial Hessian sum (partial sums are added in float64)
# A float32 Hessian is off by |E_ij| <= _F32_EPS·sqrt(H_ii·H_jj) (3 roundings in the product, 1 of
# w, 1 of w·product, recursive summation of <= _HESS_CHUNK terms; Cauchy-Schwarz), so it slows
# Newton by a linear factor <= ‖H^-½ E H^-½‖ <= K·_F32_EPS·max_i H_ii / α near the optimum.
# float32 is kept while that factor is <= _F32_MAX_RATE, else the products become float64.
_F32_EPS = (5 + _HESS_CHUNK) * 2.0**-24
_F32_MAX_RATE = 0.05


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + n)`` for every (s, n), without a Python loop."""
    offs = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
    return offs + np.arange(int(lens.sum()), dtype=offs.dtype)


def _pair_products(x: np.ndarray, dtype: type) -> np.ndarray:
    """``[P, K(K+1)/2]`` products Δφ_i·Δφ_j (i <= j) of every pair: the Hessian's data."""
    xT = np.ascontiguousarray(x.T, dtype=dtype)  # [K,P]: contiguous columns
    iu, ju = np.triu_indices(x.shape[1])
    out = np.empty((len(iu), len(x)), dtype=dtype)
    for c in range(len(iu)):  # K(K+1)/2 column products, not a loop over pairs or users
        np.multiply(xT[iu[c]], xT[ju[c]], out=out[c])
    return np.ascontiguousarray(out.T)


def _logistic(m: np.ndarray, w_dtype: type) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pair, from one sigmoid q = σ(m): (log q, q, w = q(1 − q)), w in the Hessian's dtype.

    −log q = softplus(−m) is the pair's loss, 1 − q = σ(−m) its gradient weight (the gradient
    is taken as Σ q Δφ − Σ Δφ, so 1 − q is never formed) and w its Hessian weight. Below
    m ≈ −700 q underflows, so log q takes the exact path there.
    """
    n = len(m)
    logq, q, w = np.empty(n), np.empty(n), np.empty(n, dtype=w_dtype)
    mt, lt, qt, wt = (torch.from_numpy(a) for a in (m, logq, q, w))
    torch.sigmoid(mt, out=qt)
    torch.addcmul(qt, qt, qt, value=-1.0, out=wt)
    if n and float(mt.min()) < -700.0:  # pragma: no cover - extreme λ only
        lt.copy_(F.logsigmoid(mt))
    else:
        torch.log(qt, out=lt)
    return logq, q, w


class _Pairs:
    """The working set: its users' pairs, sorted by user (contiguous runs), unpadded.

    Every per-user sum is one sparse product over the sorted pairs (scipy's CSR kernels; no
    padding, no per-bucket gather):

    - margins m = T λ, with T the ``[P, U·K]`` matrix whose row n holds Δφ_n in its user's K
      columns;
    - gradient sums Σ_n q_n Δφ_n = S_q Δφ, with S the ``[users, P]`` matrix that sums each
      user's run of pairs, weighted (float64);
    - Hessian sums Σ_n w_n Δφ_n Δφ_nᵀ = S_w X₂, with X₂ the K(K+1)/2 products of each pair,
      precomputed once (``rows`` point into them, so compaction never copies them). They are
      float32 while that is accurate enough (see ``_F32_EPS``): the Hessian is the pass that
      moves the most bytes, and it only shapes the step; loss and gradient (hence the optimum
      and the stopping test) stay float64. For K > 16 the products would be too large and the
      Hessian is Tᵀ(w ⊙ Δφ) in float64 instead.
    """

    def __init__(
        self,
        x: np.ndarray,
        col: np.ndarray,
        rows: np.ndarray,
        users: np.ndarray,
        counts: np.ndarray,
        n_users: int,
        source: np.ndarray,
        xx: np.ndarray | None,
    ) -> None:
        self.x, self.col, self.rows, self.users, self.counts = x, col, rows, users, counts
        self.source, self.xx = source, xx  # all sorted pairs and their products
        P, K = x.shape
        idx = col.dtype
        self.indptr = np.zeros(len(users) + 1, dtype=idx)
        np.cumsum(counts, out=self.indptr[1:])
        self.starts = self.indptr[:-1].astype(np.int64)
        self.arange = np.arange(P, dtype=idx)
        ptr = np.arange(0, P * K + 1, K, dtype=idx)
        self.T = sp.csr_array((x.reshape(-1), col.reshape(-1), ptr), shape=(P, n_users * K))
        # Hessian rows: runs of at most _HESS_CHUNK pairs, each inside one user's run
        n_chunks = (counts + _HESS_CHUNK - 1) // _HESS_CHUNK
        self.first_chunk = np.zeros(len(users), dtype=np.int64)
        np.cumsum(n_chunks[:-1], out=self.first_chunk[1:])
        within = np.arange(int(n_chunks.sum())) - np.repeat(self.first_chunk, n_chunks)
        self.chunk_ptr = np.append(
            np.repeat(self.indptr[:-1], n_chunks) + within * _HESS_CHUNK, P
        ).astype(idx)
        self.iu, self.ju = np.triu_indices(K)

    @property
    def w_dtype(self) -> type:
        return np.float64 if self.xx is None else self.xx.dtype.type

    def to_float64(self) -> None:
        """Recompute the pair products in float64 (when float32 would slow Newton down)."""
        self.xx = _pair_products(self.source, np.float64)

    def margins(self, v: np.ndarray) -> np.ndarray:
        """m_n = Δφ_n · v_{user(n)} for ``v [n_users, K]``."""
        return self.T @ v.reshape(-1)

    def weighted_sums(self, v: np.ndarray) -> np.ndarray:
        """Σ_n v_n Δφ_n over each user's run, ``[u, K]`` in ``users`` order."""
        P = len(self.x)
        return sp.csr_array((v, self.arange, self.indptr), shape=(len(self.users), P)) @ self.x

    def hessian_sums(self, w: np.ndarray) -> np.ndarray:
        """Σ_n w_n Δφ_n Δφ_nᵀ over each user's run, ``[u, K, K]`` float64 in ``users`` order."""
        K = self.x.shape[1]
        if self.xx is None:
            z = torch.from_numpy(self.x).mul(torch.from_numpy(w).unsqueeze(1)).numpy()
            return (self.T.T @ z).reshape(-1, K, K)[self.users]
        S = sp.csr_array(
            (w, self.rows, self.chunk_ptr), shape=(len(self.chunk_ptr) - 1, len(self.xx))
        )
        h = np.add.reduceat((S @ self.xx).astype(np.float64), self.first_chunk, axis=0)
        H = np.empty((len(self.users), K, K))
        H[:, self.iu, self.ju] = h
        H[:, self.ju, self.iu] = h
        return H

    def seg_sum(self, v: np.ndarray) -> np.ndarray:
        """Σ of a per-pair vector over each user's run (in ``users`` order)."""
        return np.add.reduceat(v, self.starts)

    def subset(self, keep_user: np.ndarray, n_users: int) -> tuple[_Pairs, np.ndarray]:
        """The working set restricted to ``keep_user[users]``; also returns the pair mask."""
        k = keep_user[self.users]
        pk = np.repeat(k, self.counts)
        x, col, rows = (np.compress(pk, a, axis=0) for a in (self.x, self.col, self.rows))
        return _Pairs(
            x, col, rows, self.users[k], self.counts[k], n_users, self.source, self.xx
        ), pk


def _newton(
    pairs: _Pairs, mu: np.ndarray, l2: float, max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Damped Newton for every user of ``pairs`` at once; returns (λ, f, ∇f, iterations).

    Per iteration: a batched solve over the active users, one pass for the trial margins
    T(λ + step), one sigmoid per pair (loss, gradient and Hessian weights at once), one pass
    each for the gradient and the Hessian sums. The Armijo line search costs no extra pass: the
    trial loss comes with the sigmoid, and margins are linear in the step, so a user whose full
    step fails backtracks on its own pairs only. Users leave the active set when their Newton
    decrement is below ``tol``·(1+f) (or when no step decreases f); once the active users hold
    less than 3/4 of the working set's pairs, the set is compacted to theirs.
    """
    U, K = mu.shape
    eye = l2 * np.eye(K)
    lam = mu.copy()
    f, g, H = np.zeros(U), np.zeros((U, K)), np.zeros((U, K, K))
    sum_x = np.zeros((U, K))  # ∇f = Σ q Δφ − Σ Δφ + α(λ − μ), as σ(−m) = 1 − q
    W = pairs.users

    def ridge(lmb: np.ndarray, muw: np.ndarray) -> np.ndarray:
        return 0.5 * l2 * ((lmb - muw) ** 2).sum(1)

    def hessian(q: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Hessian sums of the working set; switches to float64 products if float32 is too
        coarse for this problem (the rate bound of ``_F32_EPS``)."""
        HW = pairs.hessian_sums(w)
        if (
            pairs.w_dtype == np.float32
            and len(HW)
            and K * _F32_EPS * (HW[:, range(K), range(K)].max() + l2) > _F32_MAX_RATE * l2
        ):
            pairs.to_float64()
            HW = pairs.hessian_sums(q * (1.0 - q))
        return HW

    if lam[W].any():
        m = pairs.margins(lam)
        logq, q, w = _logistic(m, pairs.w_dtype)
        f[W] = -pairs.seg_sum(logq) + ridge(lam[W], mu[W])
        gs = pairs.weighted_sums(q)
        sum_x[W] = pairs.weighted_sums(np.ones(len(m)))
    else:  # λ = μ = 0: every margin is 0, every pair has loss log 2 and weights q = ½, w = ¼
        n = len(pairs.x)
        m, q, w = np.zeros(n), np.full(n, 0.5), np.full(n, 0.25, dtype=pairs.w_dtype)
        f[W] = np.log(2.0) * pairs.counts
        gs = pairs.weighted_sums(q)
        sum_x[W] = 2.0 * gs  # exact: halving every term halves every partial sum
    g[W] = gs - sum_x[W] + l2 * (lam[W] - mu[W])
    H[W] = hessian(q, w)
    active = np.zeros(U, dtype=bool)
    active[W] = True
    A = W
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        # H + α·I is symmetric positive definite; a batched LU solve is the cheapest call
        stepA = -torch.linalg.solve(torch.from_numpy(H[A] + eye), torch.from_numpy(g[A])).numpy()
        dec = -(g[A] * stepA).sum(1)  # Newton decrement², >= 0 since H is positive definite
        if not np.isfinite(dec).all():
            raise FloatingPointError("fit_lambdas: non-finite Newton step (|Δφ| too large?)")
        moving = dec > 2 * tol * (1.0 + np.abs(f[A]))
        active[A[~moving]] = False
        A, stepA, dec = A[moving], stepA[moving], dec[moving]
        if not len(A):
            break
        if pairs.counts[active[pairs.users]].sum() < 0.75 * len(m):  # compact to the movers
            pairs, pk = pairs.subset(active, U)
            m = m[pk]
        trial = lam.copy()
        trial[A] += stepA
        m_new = pairs.margins(trial)  # users not moving keep their margins
        logq, q, w = _logistic(m_new, pairs.w_dtype)
        pos = np.searchsorted(pairs.users, A)
        fA = f[A]
        f_t = -pairs.seg_sum(logq)[pos] + ridge(trial[A], mu[A])
        t = np.ones(len(A))
        bad = ~(f_t <= fA - 1e-4 * dec)
        if bad.any():  # per-user backtracking on the margins of the failing users' pairs only
            b = np.flatnonzero(bad)
            lens = pairs.counts[pos[b]]
            pb = _ranges(pairs.starts[pos[b]], lens)
            starts_b = np.zeros(len(b), dtype=np.int64)
            np.cumsum(lens[:-1], out=starts_b[1:])
            mb = m[pb]
            dmb = m_new[pb] - mb
            tb, okb = np.ones(len(b)), np.zeros(len(b), dtype=bool)
            for _ in range(29):
                tb = np.where(okb, tb, 0.5 * tb)
                mt = mb + np.repeat(tb, lens) * dmb
                ft = -np.add.reduceat(_logistic(mt, pairs.w_dtype)[0], starts_b) + ridge(
                    lam[A[b]] + tb[:, None] * stepA[b], mu[A[b]]
                )
                okb = ft <= fA[b] - 1e-4 * tb * dec[b]
                if okb.all():
                    break
            t[b], f_t[b] = tb, ft
            acc = np.repeat(ft <= fA[b], lens)  # never accept an ascent (rounding at the optimum)
            m_new[pb] = np.where(acc, mt, mb)
            _, q[pb], w[pb] = _logistic(m_new[pb], pairs.w_dtype)
        ok = f_t <= fA
        active[A[~ok]] = False  # no decrease possible: λ, f, ∇f stay as they are
        A, t, stepA, f_t = A[ok], t[ok], stepA[ok], f_t[ok]
        lam[A] += t[:, None] * stepA
        f[A] = f_t
        m = m_new
        if not len(A):
            break
        pos = np.searchsorted(pairs.users, A)
        g[A] = pairs.weighted_sums(q)[pos] - sum_x[A] + l2 * (lam[A] - mu[A])
        H[A] = hessian(q, w)[pos]
    return lam, f, g, it


def fit_lambdas(
    dphi: np.ndarray,
    user: np.ndarray,
    n_users: int,
    l2: float,
    prior_mean: np.ndarray | None = None,
    informative: np.ndarray | None = None,
    min_informative: int = 1,
    max_iter: int = 50,
    tol: float = 1e-10,
    row_names: np.ndarray | None = None,
) -> LambdaFit:
    """Solve Eq. 2 (+ ridge towards ``prior_mean``) for every user at once.

    ``dphi [P,K]`` are winner-minus-loser type rewards, ``user [P]`` each pair's user index in
    ``[0, n_users)``; ``informative [P]`` marks pairs that count towards ``min_informative``
    (default: all pairs with Δφ ≠ 0). ``prior_mean`` is ``[K]`` (shared) or ``[U,K]``.
    ``row_names`` name pairs in error messages (e.g. ``ranking_id 123``). The stopping rule
    (Newton decrement below ``tol``·(1+f), evaluated with the float64 gradient) bounds each
    user's loss excess by about ``tol`` relative; ``iterations`` counts Newton iterations of the
    slowest user (including the one that found it converged), at most ``max_iter``.
    """
    dphi = np.asarray(dphi, dtype=np.float64)
    user = np.asarray(user, dtype=np.int64)
    row_abs = _check_inputs(dphi, user, n_users, row_names)
    if l2 <= 0:
        raise ValueError(
            f"fit_lambdas: l2 must be > 0 (got {l2}); without it a user whose pairs "
            "are separable has no finite λ"
        )
    K = dphi.shape[1]
    mu = (
        np.zeros((n_users, K))
        if prior_mean is None
        else np.broadcast_to(np.asarray(prior_mean, dtype=np.float64), (n_users, K)).copy()
    )
    nonzero = row_abs > 0  # Δφ ≠ 0 (a sum of absolute values is 0 only if every term is)
    informative = nonzero if informative is None else (np.asarray(informative, bool) & nonzero)
    n_pairs = np.bincount(user, minlength=n_users)
    n_inf = np.bincount(user, weights=informative, minlength=n_users).astype(np.int64)
    fallback = n_inf < int(min_informative)

    fit_user = ~fallback & (n_pairs > 0)
    if len(user) > 1 and (np.diff(user) < 0).any():
        # a stable sort of small unsigned keys is numpy's O(P) radix sort
        key = user.astype(np.uint16) if n_users <= np.iinfo(np.uint16).max else user
        order = np.argsort(key, kind="stable")
        xs = np.take(dphi, order, axis=0)
    else:
        xs = dphi
    users = np.flatnonzero(fit_user)
    counts = n_pairs[users]
    has_pairs = n_pairs > 0
    if not fit_user[has_pairs].all():  # drop the pairs of fallback users (contiguous runs)
        xs = np.compress(np.repeat(fit_user[has_pairs], n_pairs[has_pairs]), xs, axis=0)
    xs = np.ascontiguousarray(xs)
    small = len(xs) * K < np.iinfo(np.int32).max and n_users * K < np.iinfo(np.int32).max
    idx = np.int32 if small else np.int64
    col = np.empty((len(xs), K), dtype=idx)  # T's column of every Δφ entry: user·K + k
    torch.add(
        torch.from_numpy(np.repeat((users * K).astype(idx), counts)).unsqueeze(1),
        torch.arange(K, dtype=torch.from_numpy(col).dtype),
        out=torch.from_numpy(col),
    )
    products = K * (K + 1) // 2 <= _MAX_PRODUCTS
    pairs = _Pairs(
        xs,
        col,
        np.arange(len(xs), dtype=idx),
        users,
        counts,
        n_users,
        xs,
        _pair_products(xs, np.float32) if products else None,
    )
    lam, loss, g, iters = (
        _newton(pairs, mu, l2, max_iter, tol)
        if len(users)
        else (mu.copy(), np.zeros(n_users), np.zeros((n_users, K)), 0)
    )
    lam[~fit_user] = mu[~fit_user]
    loss[~fit_user] = 0.0
    gnorm = np.linalg.norm(g, axis=1)
    gnorm[~fit_user] = 0.0
    # fallback users: λ = μ, loss reported at μ on their own pairs (ties included)
    if fallback.any():
        fb_pairs = fallback[user]
        sp_fb = np.logaddexp(0.0, -(dphi[fb_pairs] * mu[user[fb_pairs]]).sum(1))
        loss[fallback] = np.bincount(user[fb_pairs], weights=sp_fb, minlength=n_users)[fallback]
    if not np.isfinite(lam).all():  # pragma: no cover - guarded by the inputs and l2 > 0
        raise FloatingPointError("fit_lambdas: non-finite λ; this is a bug")
    return LambdaFit(
        lam,
        n_pairs,
        n_inf,
        fallback,
        loss,
        gnorm,
        iters,
        np.asarray(prior_mean) if prior_mean is not None else np.zeros(K),
    )


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


def fit_users(
    model: Any,
    pairs: PairSet,
    store: FeatureStore,
    params: dict[str, Any],
    row_names: np.ndarray | None = None,
) -> tuple[LambdaFit, np.ndarray]:
    """λ for every user of ``pairs`` (Eq. 2 with the configured prior); returns (fit, μ).

    This is the public entry point for other stages: LPP-style reference pairs or any user's
    own pairs go in as a :class:`PairSet`, λ comes out in ``pairs.user_ids`` order.
    """
    return fit_users_dphi(pair_dphi(model, pairs, store), pairs, params, row_names)


def fit_users_dphi(
    dphi: np.ndarray,
    pairs: PairSet,
    params: dict[str, Any],
    row_names: np.ndarray | None = None,
    mu: np.ndarray | None = None,
) -> tuple[LambdaFit, np.ndarray]:
    """:func:`fit_users` on given ``Δφ [P,K]``, for type rewards that are not a reward model
    (the planted ones, in the ceiling diagnostic); returns (fit, μ). A given ``mu`` is the prior
    mean as is (e.g. the training users' μ for new users), otherwise it comes from ``dphi``."""
    l2 = float(params["l2"])
    if mu is None:
        mu = (
            population_lambda(dphi, l2)
            if params["prior"] == "population"
            else np.zeros(dphi.shape[1])
        )
    fit = fit_lambdas(
        dphi,
        pairs.user,
        pairs.n_users,
        l2,
        prior_mean=mu,
        informative=~pairs.is_tie,
        min_informative=int(params["min_informative"]),
        max_iter=int(params["max_iter"]),
        tol=float(params["tol"]),
        row_names=row_names,
    )
    return fit, mu


def lambda_table(user_ids: np.ndarray, fit: LambdaFit, fitted_on: str = "train") -> pd.DataFrame:
    """One row per user; ``fitted_on`` says which pairs gave λ (``train`` or ``support``)."""
    df = pd.DataFrame({"user_id": np.asarray(user_ids, dtype=np.int64)})
    for k in range(fit.lam.shape[1]):
        df[f"lambda_{k}"] = fit.lam[:, k]
    df["n_pairs"] = fit.n_pairs.astype(np.int64)
    df["n_informative"] = fit.n_informative.astype(np.int64)
    df["fallback"] = fit.fallback.astype(bool)
    df["fitted_on"] = fitted_on
    return df


def fit_support_users(
    model: Any,
    support: pd.DataFrame,
    store: FeatureStore,
    params: dict[str, Any],
    mu: np.ndarray,
    source: str,
) -> pd.DataFrame:
    """λ of held-out users from their support sets alone (Eq. 2, φ frozen, prior μ from train).

    PIPE describes no new-user path; this is the reading every method shares: a new user is
    known only by the support pairs PPD and Premier also get. μ stays the training users'
    population λ, so adding the support sets changes no training user's λ.
    """
    pairs = build_pairs(support, store, source=source)
    fit, _ = fit_users_dphi(pair_dphi(model, pairs, store), pairs, params, mu=mu)
    return lambda_table(pairs.user_ids, fit, fitted_on="support")


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
    parser.add_argument(
        "--support",
        default=None,
        help="splits/ppd/support.parquet: held-out users' λ from these alone",
    )
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
    table = lambda_table(pairs.user_ids, fit)
    n_support_users = 0
    if args.support:
        support = read_split(args.support)
        both = np.intersect1d(support["user_id"].unique(), table["user_id"])
        if len(both):
            raise ValueError(
                f"{args.support}: user_id {int(both[0])} also has PIPE train pairs "
                f"in {args.train}; support users must be held out of train"
            )
        if len(support):
            extra = fit_support_users(model, support, store, params, mu, str(args.support))
            n_support_users = len(extra)
            table = (
                pd.concat([table, extra], ignore_index=True)
                .sort_values("user_id", kind="stable")
                .reset_index(drop=True)
            )
    write_parquet(table, args.out)
    summary = {
        "population_lambda": mu.tolist(),
        "l2": float(params["l2"]),
        "prior": params["prior"],
        "min_informative": int(params["min_informative"]),
        "n_users": pairs.n_users,
        "n_pairs": pairs.n_pairs,
        "n_support_users": n_support_users,
        "n_fallback": int(fit.fallback.sum()),
        "newton_iterations": fit.iterations,
        "max_grad_norm": float(fit.grad_norm.max()) if len(fit.grad_norm) else 0.0,
        "fallback_rule": "users with fewer than min_informative non-tie pairs with "
        "non-zero Δφ get λ = population λ (prior mean)",
    }
    write_json(summary, args.summary)
    log.info(
        "fit_lambda: %d users (%d fallback), %d Newton iterations, max ‖∇f‖ %.2e, %.2fs",
        pairs.n_users,
        summary["n_fallback"],
        fit.iterations,
        summary["max_grad_norm"],
        time.time() - t0,  # logged, not in the summary: the same input gives the same bytes
    )
