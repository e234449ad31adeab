"""How often each judge orders a pair of images the way the reference judge (the oracle) does.

A win rate is only as good as its judge. PPD validates GPT-4o against human votes (83%); on the
synthetic world we can do better and compare every judge with the users' true rewards, on the
very comparisons the win-rate table is built from (the seed-paired cross-method pairs at the
selected checkpoints, pooled over the configured method pairs). Pairs the reference calls a tie
carry no ground-truth order and are excluded (their count is reported); a judge's own tie counts
half, so a judge that always ties scores 0.5, the same as a coin.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from prefgen.core.seeding import rng
from prefgen.evaluation.bootstrap import two_way_ci
from prefgen.evaluation.win_rates import USER_GROUPS, group_rows, outcomes, paired_replicates

AGREEMENT_COLUMNS = [
    "judge",
    "reference",
    "users",
    "n",
    "agreement",
    "ci_low",
    "ci_high",
    "n_reference_ties",
    "n_users",
    "n_prompts",
]


def agreement_scores(
    judge_a: np.ndarray,
    judge_b: np.ndarray,
    ref_a: np.ndarray,
    ref_b: np.ndarray,
    tie_tolerance: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(agreement per pair: 1 same order, 0.5 judge tie, 0 opposite; reference-tie mask)."""
    judge_win, judge_tie = outcomes(judge_a, judge_b, tie_tolerance)
    ref_win, ref_tie = outcomes(ref_a, ref_b, tie_tolerance)
    agree = np.where(judge_tie, 0.5, (judge_win == ref_win).astype(np.float64))
    return agree, ref_tie


def judge_agreement(
    scores: pd.DataFrame,
    pairs: Sequence[Sequence[str]],
    judges: Sequence[str],
    reference: str,
    selected: pd.DataFrame,
    n_boot: int,
    confidence: float,
    tie_tolerance: float,
    seed: int,
) -> pd.DataFrame:
    """One row per (judge != reference, user group): agreement with the reference and its CI,
    pooled over the comparisons of every pair and training-seed replicate."""
    frames = []
    for method, opponent in pairs:
        both, _ = paired_replicates(scores, selected, method, opponent)
        both["pair"] = f"{method}-{opponent}"
        frames.append(both)
    pooled = pd.concat(frames, ignore_index=True)
    rows = []
    for judge in judges:
        if judge == reference:
            continue
        for group in USER_GROUPS:
            g = group_rows(pooled, group)
            if g.empty:
                continue
            agree, ref_tie = agreement_scores(
                g[f"{judge}_a"],
                g[f"{judge}_b"],
                g[f"{reference}_a"],
                g[f"{reference}_b"],
                tie_tolerance,
            )
            keep = ~ref_tie
            if not keep.any():
                continue
            ci = two_way_ci(
                agree[keep],
                g["user_id"].to_numpy()[keep],
                g["prompt_id"].to_numpy()[keep],
                n_boot,
                rng(seed, "agreement", judge, reference, group),
                confidence,
            )
            rows.append(
                {
                    "judge": judge,
                    "reference": reference,
                    "users": group,
                    "n": ci.n,
                    "agreement": ci.estimate,
                    "ci_low": ci.low,
                    "ci_high": ci.high,
                    "n_reference_ties": int(ref_tie.sum()),
                    "n_users": ci.n_users,
                    "n_prompts": ci.n_prompts,
                }
            )
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)
