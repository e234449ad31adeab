"""Two-way cluster bootstrap for a mean over (user, prompt) cells: the CIs of every win rate.

A win rate is a mean over seed-paired comparisons, and those are not independent: the same user
appears with every prompt and the same prompt with every user, so both are sources of
between-cluster variance. Resampling single comparisons (or only users) ignores one of them and
gives intervals that are too narrow when prompts differ in difficulty (tests/test_win_rates.py
shows the user-only bootstrap under-covering in such a world). We use the "pigeonhole" two-way
bootstrap (Owen, 2007, Ann. Appl. Stat. 1(2)): draw users with replacement and, independently,
prompts with replacement; the bootstrap sample is every observed comparison whose user *and*
prompt were drawn, weighted by the product of their multiplicities. It is mildly conservative
(it counts the interaction variance more than once), which the coverage test allows for.

The statistic is the ratio of weighted sums, so one draw is two small matrix products over a
``[users, prompts]`` table of sums and counts: 2000 draws on 100 users x 500 prompts take
milliseconds, and unbalanced designs (not every user sees every prompt) are handled exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: int
    n_users: int
    n_prompts: int


def cell_table(values: np.ndarray, users: np.ndarray, prompts: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(sums, counts)``, each ``[n_users, n_prompts]``: observations aggregated per cell."""
    _, u = np.unique(users, return_inverse=True)
    _, p = np.unique(prompts, return_inverse=True)
    shape = (int(u.max()) + 1, int(p.max()) + 1)
    sums = np.zeros(shape)
    counts = np.zeros(shape)
    np.add.at(sums, (u, p), values)
    np.add.at(counts, (u, p), 1.0)
    return sums, counts


def bootstrap_means(values: np.ndarray, users: np.ndarray, prompts: np.ndarray, n_boot: int,
                    gen: np.random.Generator, resample_users: bool = True,
                    resample_prompts: bool = True) -> np.ndarray:
    """``[n_boot]`` bootstrap replicates of the mean of ``values`` (NaN where a draw is empty)."""
    sums, counts = cell_table(np.asarray(values, dtype=np.float64), users, prompts)
    n_u, n_p = sums.shape
    wu = (gen.multinomial(n_u, np.full(n_u, 1.0 / n_u), size=n_boot).astype(np.float64)
          if resample_users else np.ones((n_boot, n_u)))
    wp = (gen.multinomial(n_p, np.full(n_p, 1.0 / n_p), size=n_boot).astype(np.float64)
          if resample_prompts else np.ones((n_boot, n_p)))
    num = ((wu @ sums) * wp).sum(axis=1)
    den = ((wu @ counts) * wp).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def two_way_ci(values: np.ndarray, users: np.ndarray, prompts: np.ndarray, n_boot: int,
               gen: np.random.Generator, confidence: float = 0.95,
               resample_users: bool = True, resample_prompts: bool = True) -> Interval:
    """Mean of ``values`` with a percentile bootstrap interval over users and prompts."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("two_way_ci: no observations")
    if not (values.shape == np.shape(users) == np.shape(prompts)):
        raise ValueError("two_way_ci: values, users and prompts must have the same length")
    reps = bootstrap_means(values, users, prompts, n_boot, gen, resample_users, resample_prompts)
    reps = reps[np.isfinite(reps)]
    alpha = (1.0 - confidence) / 2.0
    low, high = (np.quantile(reps, [alpha, 1.0 - alpha]) if reps.size
                 else (np.nan, np.nan))
    return Interval(float(values.mean()), float(low), float(high), int(values.size),
                    int(np.unique(users).size), int(np.unique(prompts).size))
