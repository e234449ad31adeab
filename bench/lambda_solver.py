"""Benchmark of the batched per-user λ solver (PIPE Eq. 2) against a per-user scikit-learn loop.

The λ solver's target: the batched solve (``prefgen.user_model.lambda_fit.fit_lambdas``,
called as the ``fit_lambda`` stage calls it) vs a Python loop of scikit-learn
``LogisticRegression`` fits, one per user, on the same synthetic problem in the same run.
Prints the speed ratio (target >= 50x) and the largest per-user relative difference of the
regularised loss (target <= 1e-6), plus max |Δλ| and both solutions' largest gradient norms.

Synthetic problem (stand-in, generated from ``--seed``): ``--users`` users; pairs per user
n_u = clip(round(LogNormal(log 30, 2)), 1, 2000): median ~28, ~14% of users with < 4 pairs and
a mean of ~155 (~780K pairs at 5,000 users), close to Pick-a-Pic v2 (~800K pairs from ~5K
users, PIPE §4; PPD §5.2 drops 824 of its users for having < 4 pairs). Each pair has K
type-reward differences Δφ_AB = φ(A) − φ(B) ~ N(0, I_K); each user has a planted
λ*_u ~ N(m, I_K) with a shared m (population taste); the label is Bradley–Terry,
P(A ≻ B) = σ(λ*_uᵀ Δφ_AB). The solver sees winner-minus-loser rows Δφ = ±Δφ_AB (pair rows
shuffled, as in a training split); no ties, so every pair is informative.

Same objective on both sides. ``fit_lambdas`` minimises, per user,

    f_u(λ) = Σ_n log(1 + exp(−λᵀ Δφ_n)) + (α/2) ‖λ − μ‖²        (sum over pairs, not mean)

with α = ``lambda.l2`` from the config. The bench uses μ = 0 (plain L2 towards zero): the
stage's ``prior: population`` only moves the ridge centre, which scikit-learn cannot express;
the code path is otherwise identical. scikit-learn's ``LogisticRegression(C, l1_ratio=0,
fit_intercept=False)`` (pure L2; ``penalty='l2'`` is deprecated in 1.8+) minimises
C·Σ_n log-loss(y_n, wᵀx_n) + ½‖w‖²; with x_n = Δφ_AB and y_n = [A won] the log-loss equals
log(1 + exp(−wᵀΔφ_n)), so dividing f_u by α gives exactly scikit-learn's objective with
C = 1/α. Solver: ``newton-cholesky`` (scikit-learn's solver for few features; as fast here
as lbfgs, which in a trial left gradients up to ~1e-5 at tol 1e-10), tol 1e-10,
max_iter 1000, one fresh estimator per user.

Single-class users (A won every pair, or B did; e.g. every one-pair user): scikit-learn refuses one
class, so such a user gets one extra row x = 0 with the other label and sample_weight 0. It
adds exactly nothing to the loss or its gradient, so the objective is unchanged.

Timing: wall time of the whole ``fit_lambdas`` call (checks, sort by user, setup, Newton; median of
``--repeats``) vs the whole loop over all users (per-user slices prepared beforehand, not
timed; the loop is timed over a random subset of ``--loop-users`` users and scaled linearly
if that option is set). Both single-threaded (``torch.set_num_threads(1)``, threadpoolctl
limits BLAS/OpenMP to 1) so the comparison is per core on a shared machine. The losses are
compared with ``lambda_fit.regularised_loss`` (float64) evaluated on both solutions. Usage::

    .venv/bin/python bench/lambda_solver.py [--users 5000] [--config config/config.yaml]

Always exits 0 (a bench); PASS/FAIL lines report the targets.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from prefgen.core.config import load_config
from prefgen.user_model.lambda_fit import fit_lambdas, regularised_loss
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
SPEED_TARGET = 50.0
LOSS_TARGET = 1e-6


def make_problem(users: int, k: int, seed: int) -> dict[str, np.ndarray]:
    """Synthetic Pick-a-Pic-like pairs with planted λ* and Bradley–Terry labels (stand-in)."""
    rng = np.random.default_rng(seed)
    counts = np.clip(np.rint(rng.lognormal(np.log(30.0), 2.0, users)), 1, 2000).astype(np.int64)
    lam_true = rng.normal(0.5, 1.0, (1, k)) + rng.normal(0.0, 1.0, (users, k))
    user = np.repeat(np.arange(users), counts)
    d_ab = rng.normal(0.0, 1.0, (len(user), k))  # φ(A) − φ(B)
    a_won = rng.random(len(user)) < 1.0 / (1.0 + np.exp(-(d_ab * lam_true[user]).sum(1)))
    order = rng.permutation(len(user))  # a training split is not grouped by user
    return {
        "counts": counts,
        "user": user[order],
        "d_ab": d_ab[order],
        "a_won": a_won[order],
        "lam_true": lam_true,
    }


def sklearn_inputs(prob: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per-user (X, y, sample_weight); single-class users get a zero-weight x = 0 row."""
    user, d_ab, y = prob["user"], prob["d_ab"], prob["a_won"].astype(np.int64)
    order = np.argsort(user, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(prob["counts"])])
    out = []
    for u in range(len(prob["counts"])):
        rows = order[bounds[u] : bounds[u + 1]]
        x, yu, sw = d_ab[rows], y[rows], np.ones(len(rows))
        if yu.min() == yu.max():
            x = np.vstack([x, np.zeros((1, x.shape[1]))])
            yu = np.append(yu, 1 - yu[0])
            sw = np.append(sw, 0.0)
        out.append((x, yu, sw))
    return out


def sklearn_loop(
    inputs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], users: np.ndarray, l2: float
) -> tuple[np.ndarray, float]:
    """Fit one ``LogisticRegression`` per user in ``users``; returns (λ rows, seconds)."""
    k = inputs[0][0].shape[1]
    lam = np.zeros((len(users), k))
    t0 = time.perf_counter()
    for i, u in enumerate(users):
        x, y, sw = inputs[u]
        model = LogisticRegression(
            C=1.0 / l2,
            l1_ratio=0.0,
            fit_intercept=False,
            solver="newton-cholesky",
            tol=1e-10,
            max_iter=1000,
        )
        lam[i] = model.fit(x, y, sample_weight=sw).coef_[0]
    return lam, time.perf_counter() - t0


def grad_norms(dphi: np.ndarray, user: np.ndarray, lam: np.ndarray, l2: float) -> np.ndarray:
    """‖∇f_u(λ_u)‖ for every user (μ = 0), vectorised over pairs."""
    p = 1.0 / (1.0 + np.exp((dphi * lam[user]).sum(1)))  # σ(−m)
    g = np.zeros_like(lam)
    np.add.at(g, user, -dphi * p[:, None])
    return np.linalg.norm(g + l2 * lam, axis=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--k", type=int, default=5, help="number of user types (Δφ features)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--config",
        default=str(REPO / "config" / "config.yaml"),
        help="its `lambda` section gives l2, min_informative, max_iter, tol",
    )
    ap.add_argument("--repeats", type=int, default=3, help="batched solves timed (median)")
    ap.add_argument(
        "--loop-users",
        type=int,
        default=0,
        help="time the sklearn loop on this many random users and scale (0: all)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config)["lambda"]
    l2 = float(cfg["l2"])

    prob = make_problem(args.users, args.k, args.seed)
    counts, user = prob["counts"], prob["user"]
    dphi = np.where(prob["a_won"][:, None], prob["d_ab"], -prob["d_ab"])  # winner − loser
    n_pairs = len(user)
    inputs = sklearn_inputs(prob)  # per-user slices for the loop, prepared outside its timing
    single = int(sum(1 for _, _, sw in inputs if sw.min() == 0.0))
    print(
        f"problem (synthetic stand-in, seed {args.seed}): {args.users} users, {n_pairs} pairs, "
        f"K={args.k}; pairs/user = clip(round(LogNormal(log 30, 2)), 1, 2000): median "
        f"{int(np.median(counts))}, mean {counts.mean():.0f}, max {counts.max()}, "
        f"{(counts < 4).mean():.0%} of users < 4 pairs, {single} single-class users"
    )
    print(
        f"objective: Σ_n log(1+exp(−λᵀΔφ_n)) + (α/2)‖λ‖², α = lambda.l2 = {l2} from "
        f"{Path(args.config).name} (prior mean 0 here; the config's prior is "
        f"'{cfg['prior']}'); sklearn C = 1/α = {1.0 / l2:g}"
    )

    with threadpool_limits(limits=1):

        def batched() -> tuple[object, float]:
            t0 = time.perf_counter()
            fit = fit_lambdas(
                dphi,
                user,
                args.users,
                l2,
                prior_mean=np.zeros(args.k),
                informative=np.ones(n_pairs, dtype=bool),
                min_informative=int(cfg["min_informative"]),
                max_iter=int(cfg["max_iter"]),
                tol=float(cfg["tol"]),
            )
            return fit, time.perf_counter() - t0

        runs = [batched() for _ in range(args.repeats)]
        fit = runs[0][0]
        t_batched = statistics.median(t for _, t in runs)

        rng = np.random.default_rng(args.seed + 1)
        timed = (
            np.arange(args.users)
            if not args.loop_users or args.loop_users >= args.users
            else np.sort(rng.choice(args.users, args.loop_users, replace=False))
        )
        lam_sk_t, t_loop_part = sklearn_loop(inputs, timed, l2)
        t_loop = t_loop_part * args.users / len(timed)
        if len(timed) < args.users:  # the accuracy comparison still covers every user
            rest = np.setdiff1d(np.arange(args.users), timed)
            lam_sk = np.zeros((args.users, args.k))
            lam_sk[timed] = lam_sk_t
            lam_sk[rest] = sklearn_loop(inputs, rest, l2)[0]
        else:
            lam_sk = lam_sk_t

    order = np.argsort(user, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    f_ours = np.empty(args.users)
    f_sk = np.empty(args.users)
    for u in range(args.users):
        x = dphi[order[bounds[u] : bounds[u + 1]]]
        f_ours[u] = regularised_loss(x, fit.lam[u], l2)
        f_sk[u] = regularised_loss(x, lam_sk[u], l2)
    rel = (f_ours - f_sk) / np.abs(f_sk)
    worst = int(np.argmax(np.abs(rel)))
    solver_vs_eval = np.abs(fit.loss - f_ours) / np.abs(f_ours)
    g_ours = grad_norms(dphi, user, fit.lam, l2)
    g_sk = grad_norms(dphi, user, lam_sk, l2)
    ratio = t_loop / t_batched

    loop_note = (
        "all users"
        if len(timed) == args.users
        else f"{len(timed)} random users, scaled x{args.users / len(timed):.2f}"
    )
    print(
        f"batched fit_lambdas : {t_batched:8.3f} s  (median of {args.repeats}; "
        f"{fit.iterations} Newton iterations max, {int(fit.fallback.sum())} fallback users)"
    )
    print(
        f"sklearn loop        : {t_loop:8.3f} s  (LogisticRegression newton-cholesky, "
        f"{loop_note}; {t_loop / args.users * 1e3:.2f} ms/user)"
    )
    print(f"speed ratio loop/batched: {ratio:.1f}x  (target >= {SPEED_TARGET:g}x)")
    print(
        f"max per-user |Δf|/f: {np.abs(rel).max():.2e} (user {worst}, {counts[worst]} pairs); "
        f"largest excess of ours over sklearn {max(rel.max(), 0.0):.2e}, of sklearn over "
        f"ours {max(-rel.min(), 0.0):.2e}  (target <= {LOSS_TARGET:g})"
    )
    print(
        f"max |Δλ| = {np.abs(fit.lam - lam_sk).max():.2e}; max ‖∇f_u‖: ours {g_ours.max():.2e}, "
        f"sklearn {g_sk.max():.2e}; solver-reported vs re-evaluated loss "
        f"{solver_vs_eval.max():.1e} relative"
    )
    print(
        f"speed: {'PASS' if ratio >= SPEED_TARGET else 'FAIL'}   loss agreement: "
        f"{'PASS' if np.abs(rel).max() <= LOSS_TARGET else 'FAIL'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
