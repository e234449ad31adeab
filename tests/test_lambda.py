"""Batched per-user λ regression (PIPE Eq. 2): exactness, recovery of planted λ*, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from prefgen.user_model.lambda_fit import fit_lambdas, population_lambda, regularised_loss


def planted(n_users: int, k: int, counts: np.ndarray, seed: int = 0, scale: float = 2.0):
    """Δφ rows oriented winner-minus-loser, drawn from Bradley-Terry on planted λ*."""
    gen = np.random.default_rng(seed)
    lam_true = gen.normal(size=(n_users, k)) * scale / np.sqrt(k)
    user = np.repeat(np.arange(n_users), counts)
    x = gen.normal(size=(len(user), k))
    p = 1.0 / (1.0 + np.exp(-(x * lam_true[user]).sum(1)))
    y = gen.random(len(user)) < p
    return np.where(y[:, None], x, -x), user, lam_true


def test_matches_sklearn_per_user_solution() -> None:
    """Same penalty as sklearn's LogisticRegression(C=1/l2, no intercept): same optimum."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    counts = np.array([1, 2, 3, 5, 8, 30, 120, 7, 64, 65])
    dphi, user, _ = planted(len(counts), 4, counts, seed=1)
    l2 = 0.7
    fit = fit_lambdas(dphi, user, len(counts), l2)
    gen = np.random.default_rng(2)
    starts = np.concatenate([[0], np.cumsum(counts)])
    for u in range(len(counts)):
        x = dphi[starts[u] : starts[u + 1]]
        if len(x) == 1:  # sklearn needs both classes
            continue
        # sklearn wants labels: present each pair in a random order, label 1 = first preferred
        flip = gen.random(len(x)) < 0.5
        flip[0], flip[-1] = False, True
        xs, ys = np.where(flip[:, None], -x, x), (~flip).astype(int)
        ref = (
            sklearn.LogisticRegression(C=1.0 / l2, fit_intercept=False, tol=1e-12, max_iter=10_000)
            .fit(xs, ys)
            .coef_[0]
        )
        ours, theirs = regularised_loss(x, fit.lam[u], l2), regularised_loss(x, ref, l2)
        assert ours <= theirs * (1 + 1e-9), (u, ours, theirs)
        assert abs(ours - theirs) / theirs < 1e-7
        # another solver (lbfgs) on the same optimum: agrees to its own tolerance, not ours
        np.testing.assert_allclose(fit.lam[u], ref, rtol=0, atol=1e-4)
    assert (fit.grad_norm < 1e-5 * (1 + counts)).all()


def test_batched_equals_one_user_at_a_time() -> None:
    """Buckets and padding do not change any user's solution (prior towards μ included)."""
    counts = np.array([3, 9, 17, 200, 1, 33])
    dphi, user, _ = planted(len(counts), 3, counts, seed=3)
    mu = np.array([0.3, -0.2, 0.5])
    fit = fit_lambdas(dphi, user, len(counts), 0.5, prior_mean=mu)
    starts = np.concatenate([[0], np.cumsum(counts)])
    for u in range(len(counts)):
        x = dphi[starts[u] : starts[u + 1]]
        alone = fit_lambdas(x, np.zeros(len(x), dtype=np.int64), 1, 0.5, prior_mean=mu)
        # batched vs alone: float64 Newton to a 1e-10 decrement (quadratic convergence) puts
        # both at the optimum far closer than 1e-8; only summation order differs
        np.testing.assert_allclose(fit.lam[u], alone.lam[0], rtol=0, atol=1e-8)


def test_recovers_planted_lambda_for_users_with_50_pairs() -> None:
    """A few hundred users on known φ: λ_u points where λ*_u does once a user has >= 50 pairs.

    λ*_u has a random direction and norm 3 (labels neither random nor deterministic), pairs per
    user are heavy-tailed. Mean cosine >= 0.95 over users with >= 50 pairs; users with few pairs
    are visibly worse, so the check measures estimation, not luck.
    """
    gen = np.random.default_rng(4)
    n_users, k = 300, 4
    counts = np.clip(np.round(np.exp(gen.normal(3.8, 1.0, n_users))), 1, 2000).astype(int)
    dphi, user, _ = planted(n_users, k, counts, seed=5)
    direction = gen.normal(size=(n_users, k))
    lam_true = 3.0 * direction / np.linalg.norm(direction, axis=1, keepdims=True)
    x = gen.normal(size=(len(user), k))
    y = gen.random(len(user)) < 1.0 / (1.0 + np.exp(-(x * lam_true[user]).sum(1)))
    dphi = np.where(y[:, None], x, -x)
    fit = fit_lambdas(dphi, user, n_users, l2=1.0)
    cos = (fit.lam * lam_true).sum(1) / (
        np.linalg.norm(fit.lam, axis=1) * np.linalg.norm(lam_true, axis=1)
    )
    many = counts >= 50
    assert many.sum() >= 100
    assert cos[many].mean() >= 0.95, np.sort(cos[many])[:10]
    assert np.median(cos[counts >= 200]) >= 0.98
    assert cos[counts < 10].mean() < cos[many].mean() - 0.1


def test_all_ties_user_falls_back_to_prior_mean() -> None:
    counts = np.array([40, 12, 30])
    dphi, user, _ = planted(3, 3, counts, seed=6)
    informative = np.ones(len(user), bool)
    informative[user == 1] = False  # user 1: every pair a tie (label randomised by the split)
    mu = population_lambda(dphi, 1.0)
    fit = fit_lambdas(dphi, user, 3, 1.0, prior_mean=mu, informative=informative)
    assert fit.fallback.tolist() == [False, True, False]
    np.testing.assert_allclose(fit.lam[1], mu)
    assert fit.n_informative.tolist() == [40, 0, 30]
    assert fit.n_pairs.tolist() == [40, 12, 30]
    assert np.isfinite(fit.lam).all() and np.isfinite(fit.loss).all()


def test_one_pair_user_is_finite_and_shrunk() -> None:
    x = np.array([[2.0, -1.0, 0.5]])
    mu = np.array([0.2, 0.2, 0.2])
    fit = fit_lambdas(x, np.array([0]), 1, 1.0, prior_mean=mu, min_informative=1)
    assert not fit.fallback[0]
    step = fit.lam[0] - mu
    assert np.isfinite(fit.lam).all()
    assert step @ x[0] > 0  # moved towards preferring its one winner
    assert np.linalg.norm(step) < np.linalg.norm(x[0])  # but the ridge keeps it close to μ
    strict = fit_lambdas(x, np.array([0]), 1, 1.0, prior_mean=mu, min_informative=2)
    assert strict.fallback[0]
    np.testing.assert_allclose(strict.lam[0], mu)


def test_user_without_pairs_and_zero_dphi_fall_back() -> None:
    x = np.array([[0.0, 0.0], [1.0, 0.5], [0.0, 0.0]])
    user = np.array([0, 2, 2])
    fit = fit_lambdas(x, user, 3, 1.0, min_informative=1)
    assert fit.fallback.tolist() == [True, True, False]  # user 0: only a Δφ = 0 pair; 1: none
    assert fit.n_informative.tolist() == [0, 0, 1]
    assert np.isfinite(fit.lam).all()


def test_nan_features_name_the_pair() -> None:
    x = np.array([[1.0, 0.0], [np.nan, 1.0]])
    with pytest.raises(ValueError, match="ranking_id 77"):
        fit_lambdas(
            x, np.array([0, 0]), 1, 1.0, row_names=np.array(["ranking_id 76", "ranking_id 77"])
        )


def test_rejects_zero_ridge_and_bad_user_index() -> None:
    x = np.ones((2, 2))
    with pytest.raises(ValueError, match="l2 must be > 0"):
        fit_lambdas(x, np.array([0, 0]), 1, 0.0)
    with pytest.raises(ValueError, match=r"user indices must lie in \[0, 1\)"):
        fit_lambdas(x, np.array([0, 1]), 1, 1.0)
