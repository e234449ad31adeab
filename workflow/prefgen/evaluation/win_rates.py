"""Checkpoint metrics, best-checkpoint selection and seed-paired win rates (PIPE Table 1).

Every method samples the same (user, prompt, seed) triples (``splits/eval_set.parquet``), so two
methods' images for one triple differ only by the method: a comparison per triple, judged by
each judge. A method wins a triple when its image scores higher for that user; a tie (scores
within ``tie_tolerance``) counts half, as PIPE and PPD count win rates. Checkpoints are chosen
as in PIPE §3.3: per method, the step whose samples the ``pipe`` judge scores highest on average;
every judge, the oracle included, then compares the same selected checkpoints, so the oracle's
verdict sits beside the PIPE model's in the same table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from prefgen.core.seeding import rng
from prefgen.evaluation.bootstrap import two_way_ci

#: columns of samples/{method}/index.parquet, carried into scores/{method}.parquet
INDEX_COLUMNS = ["method", "step", "user_id", "user_group", "prompt_id", "caption", "seed", "path"]
#: one comparison per triple: the seed-paired key shared by all methods
PAIR_KEYS = ["user_id", "prompt_id", "seed"]
USER_GROUPS = ("all", "seen", "unseen")
WIN_RATE_COLUMNS = ["method", "opponent", "judge", "users", "n", "win_rate", "tie_rate",
                    "ci_low", "ci_high", "n_users", "n_prompts", "method_step", "opponent_step",
                    "selected_by"]


def outcomes(a: np.ndarray, b: np.ndarray, tie_tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """(win score per comparison: 1, 0.5 for a tie, 0; tie mask) of ``a`` against ``b``."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    tie = np.abs(diff) <= tie_tolerance
    return np.where(tie, 0.5, (diff > 0).astype(np.float64)), tie


def checkpoint_metrics(scores: pd.DataFrame, judges: Sequence[str]) -> pd.DataFrame:
    """``method, step, judge, mean_score, n, sem``: each judge's mean on a checkpoint's samples."""
    rows = [{"method": method, "step": int(step), **row}
            for (method, step), g in scores.groupby(["method", "step"], sort=True)
            for row in judge_means(g, judges)]
    return pd.DataFrame(rows, columns=["method", "step", "judge", "mean_score", "n", "sem"])


def judge_means(group: pd.DataFrame, judges: Sequence[str]) -> list[dict[str, Any]]:
    """``judge, mean_score, n, sem`` of each judge's scores over the rows of ``group``."""
    rows = []
    for judge in judges:
        x = group[judge].to_numpy(np.float64)
        sem = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
        rows.append({"judge": judge, "mean_score": float(x.mean()), "n": int(len(x)),
                     "sem": sem})
    return rows


def scores_by_user_type(scores: pd.DataFrame, selected: pd.DataFrame, judges: Sequence[str],
                        weights: pd.DataFrame, type_names: Sequence[str]) -> pd.DataFrame:
    """``method, step, user_type, judge, n_users, n, mean_score, sem``: each method's samples at
    its selected checkpoint, grouped by each user's dominant type (largest weight).

    Win rates average over users; this shows *whose* taste a method serves: a personalised
    method should gain for every type, a population one mostly for the majority type.
    """
    steps = selected.set_index("method")["step"]
    at = scores[scores["step"] == scores["method"].map(steps)]
    dominant = weights.idxmax(axis=1)
    known = at["user_id"].isin(dominant.index)
    if not known.all():
        missing = sorted(int(u) for u in at.loc[~known, "user_id"].unique())[:5]
        raise KeyError(f"no user-type weights for sampled users {missing}")
    at = at.assign(user_type=at["user_id"].map(dominant).map(lambda k: type_names[int(k)]))
    rows = [{"method": method, "step": int(steps[method]), "user_type": user_type,
             "n_users": int(g["user_id"].nunique()), **row}
            for (method, user_type), g in at.groupby(["method", "user_type"], sort=True)
            for row in judge_means(g, judges)]
    return pd.DataFrame(rows, columns=["method", "step", "user_type", "judge", "n_users", "n",
                                       "mean_score", "sem"])


def select_checkpoints(metrics: pd.DataFrame, select_by: str,
                       reference: str | None) -> pd.DataFrame:
    """Per method the step with the best mean ``select_by`` score (earliest on a tie), and what
    the ``reference`` judge (the oracle) says about that step and about its own best step."""
    if select_by not in set(metrics["judge"]):
        raise KeyError(f"evaluate.select_by='{select_by}' is not among the scored judges "
                       f"{sorted(set(metrics['judge']))}")
    rows = []
    for method, g in metrics.groupby("method", sort=False):
        sel = g[g["judge"] == select_by].sort_values(["mean_score", "step"],
                                                     ascending=[False, True]).iloc[0]
        row = {"method": method, "step": int(sel["step"]), "selected_by": select_by,
               "selected_score": float(sel["mean_score"]),
               "n_steps": int(g["step"].nunique())}
        if reference is not None:
            ref = g[g["judge"] == reference]
            best = ref.sort_values(["mean_score", "step"], ascending=[False, True]).iloc[0]
            row.update({"reference_judge": reference,
                        "reference_score": float(ref.loc[ref["step"] == sel["step"],
                                                         "mean_score"].iloc[0]),
                        "reference_best_step": int(best["step"]),
                        "reference_best_score": float(best["mean_score"])})
        rows.append(row)
    return pd.DataFrame(rows)


def paired(scores: pd.DataFrame, method: str, method_step: int, opponent: str,
           opponent_step: int) -> pd.DataFrame:
    """The two checkpoints' samples joined on (user, prompt, seed), ``_a`` = method, ``_b`` =
    opponent; an error naming the missing triples when the two did not sample the same set."""
    a = scores[(scores["method"] == method) & (scores["step"] == method_step)]
    b = scores[(scores["method"] == opponent) & (scores["step"] == opponent_step)]
    for name, df, step in ((method, a, method_step), (opponent, b, opponent_step)):
        if df.empty:
            raise ValueError(f"no scored samples for method '{name}' at step {step}")
        dup = df.duplicated(PAIR_KEYS)
        if dup.any():
            raise ValueError(f"method '{name}' step {step}: {int(dup.sum())} duplicate "
                             f"(user_id, prompt_id, seed) rows, e.g. "
                             f"{df.loc[dup, PAIR_KEYS].iloc[0].to_dict()}")
    merged = a.merge(b, on=PAIR_KEYS, how="outer", suffixes=("_a", "_b"), indicator=True)
    unpaired = merged[merged["_merge"] != "both"]
    if len(unpaired):
        only_a = int((unpaired["_merge"] == "left_only").sum())
        raise ValueError(
            f"'{method}' (step {method_step}) and '{opponent}' (step {opponent_step}) did not "
            f"sample the same (user_id, prompt_id, seed) triples: {only_a} only in '{method}', "
            f"{len(unpaired) - only_a} only in '{opponent}', e.g. "
            f"{unpaired[PAIR_KEYS].iloc[0].to_dict()}; every method must sample the eval set")
    mismatch = merged["user_group_a"] != merged["user_group_b"]
    if mismatch.any():
        raise ValueError(f"user_group differs between '{method}' and '{opponent}' for "
                         f"{int(mismatch.sum())} triples, e.g. "
                         f"{merged.loc[mismatch, PAIR_KEYS].iloc[0].to_dict()}")
    return merged.drop(columns="_merge").rename(columns={"user_group_a": "user_group"})


def group_rows(df: pd.DataFrame, group: str) -> pd.DataFrame:
    return df if group == "all" else df[df["user_group"] == group]


def win_rates(scores: pd.DataFrame, pairs: Sequence[Sequence[str]], judges: Sequence[str],
              selected: pd.DataFrame, n_boot: int, confidence: float, tie_tolerance: float,
              seed: int) -> pd.DataFrame:
    """The win-rate table: every configured pair x judge x user group present in the data."""
    step = selected.set_index("method")["step"].to_dict()
    select_by = str(selected["selected_by"].iloc[0])
    rows = []
    for method, opponent in pairs:
        for name in (method, opponent):
            if name not in step:
                raise KeyError(f"evaluate.pairs names method '{name}', which has no scores "
                               f"(scored: {sorted(step)})")
        both = paired(scores, method, step[method], opponent, step[opponent])
        for group in USER_GROUPS:
            g = group_rows(both, group)
            if g.empty:
                continue
            for judge in judges:
                win, tie = outcomes(g[f"{judge}_a"], g[f"{judge}_b"], tie_tolerance)
                ci = two_way_ci(win, g["user_id"].to_numpy(), g["prompt_id"].to_numpy(), n_boot,
                                rng(seed, "win_rate", method, opponent, judge, group), confidence)
                rows.append({"method": method, "opponent": opponent, "judge": judge,
                             "users": group, "n": ci.n, "win_rate": ci.estimate,
                             "tie_rate": float(tie.mean()), "ci_low": ci.low, "ci_high": ci.high,
                             "n_users": ci.n_users, "n_prompts": ci.n_prompts,
                             "method_step": int(step[method]),
                             "opponent_step": int(step[opponent]), "selected_by": select_by})
    return pd.DataFrame(rows, columns=WIN_RATE_COLUMNS)
