"""Checkpoint metrics, best-checkpoint selection and seed-paired win rates (PIPE Table 1).

Every method samples the same (user, prompt, seed) triples (``splits/eval_set.parquet``), so two
methods' images for one triple differ only by the method: a comparison per triple, judged by
each judge. A method wins a triple when its image scores higher for that user; a tie (scores
within ``tie_tolerance``) counts half, as PIPE and PPD count win rates. Checkpoints are chosen
as in PIPE §3.3: per method, the step whose samples the ``pipe`` judge scores highest on average;
every judge, the oracle included, then compares the same selected checkpoints, so the oracle's
verdict sits beside the PIPE model's in the same table.

A trained method is trained once per entry of ``train.seeds`` (``train_seed`` in the scores;
``base`` is untrained, -1) and its checkpoint is selected per seed. A comparison's win rate is
the mean over seeds of the per-seed win rate, its CI a three-way bootstrap over training seeds,
users and prompts, and its ``verdict`` says whether the CI excludes 0.5 and on which side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from prefgen.core.seeding import rng
from prefgen.evaluation.bootstrap import three_way_ci, two_way_ci

#: columns of the samples index, carried into the scores files
INDEX_COLUMNS = [
    "method",
    "train_seed",
    "step",
    "user_id",
    "user_group",
    "prompt_id",
    "caption",
    "seed",
    "path",
]
#: one comparison per triple: the seed-paired key shared by all methods
PAIR_KEYS = ["user_id", "prompt_id", "seed"]
USER_GROUPS = ("all", "seen", "unseen")
#: the training-seed column, and its value for a model that is not trained (base)
SEED = "train_seed"
UNTRAINED = -1
WIN_RATE_COLUMNS = [
    "method",
    "opponent",
    "judge",
    "users",
    "n",
    "win_rate",
    "tie_rate",
    "ci_low",
    "ci_high",
    "verdict",
    "n_seeds",
    "n_users",
    "n_prompts",
    "method_steps",
    "opponent_steps",
    "selected_by",
]
PER_SEED_COLUMNS = [
    "method",
    "method_seed",
    "opponent",
    "opponent_seed",
    "judge",
    "users",
    "n",
    "win_rate",
    "tie_rate",
    "ci_low",
    "ci_high",
    "verdict",
    "n_users",
    "n_prompts",
    "method_step",
    "opponent_step",
    "selected_by",
]


def with_seeds(scores: pd.DataFrame) -> pd.DataFrame:
    """``scores`` with a ``train_seed`` column (every row untrained when there is none)."""
    return scores if SEED in scores.columns else scores.assign(**{SEED: UNTRAINED})


def verdict(low: float, high: float, null: float = 0.5) -> str:
    """``shown`` when the interval excludes ``null`` in the method's favour, ``reversed`` when it
    excludes it against the method, else ``not shown`` (an interval touching 0.5 shows nothing).
    """
    if low > null:
        return "shown"
    if high < null:
        return "reversed"
    return "not shown"


def seed_pairs(seeds: dict[str, list[int]], method: str, opponent: str) -> list[tuple[int, int]]:
    """Which (method seed, opponent seed) replicates are compared: an untrained model (base)
    pairs with every seed of the other; two trained methods pair seed i with seed i (their
    replicates are independent, so any one-to-one pairing is as good, and this one is fixed)."""
    a, b = seeds[method], seeds[opponent]
    if a == [UNTRAINED] or b == [UNTRAINED]:
        return [(sa, sb) for sa in a for sb in b]
    if a != b:
        raise ValueError(
            f"'{method}' has training seeds {a} but '{opponent}' has {b}: trained "
            "methods must share train.seeds to be compared"
        )
    return list(zip(a, b, strict=True))


def outcomes(a: np.ndarray, b: np.ndarray, tie_tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """(win score per comparison: 1, 0.5 for a tie, 0; tie mask) of ``a`` against ``b``."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    tie = np.abs(diff) <= tie_tolerance
    return np.where(tie, 0.5, (diff > 0).astype(np.float64)), tie


def checkpoint_metrics(scores: pd.DataFrame, judges: Sequence[str]) -> pd.DataFrame:
    """``method, train_seed, step, judge, mean_score, n, sem``: each judge's mean on the samples
    of one checkpoint of one training replicate."""
    scores = with_seeds(scores)
    rows = [
        {"method": method, SEED: int(train_seed), "step": int(step), **row}
        for (method, train_seed, step), g in scores.groupby(["method", SEED, "step"], sort=True)
        for row in judge_means(g, judges)
    ]
    return pd.DataFrame(rows, columns=["method", SEED, "step", "judge", "mean_score", "n", "sem"])


def judge_means(group: pd.DataFrame, judges: Sequence[str]) -> list[dict[str, Any]]:
    """``judge, mean_score, n, sem`` of each judge's scores over the rows of ``group``."""
    rows = []
    for judge in judges:
        x = group[judge].to_numpy(np.float64)
        sem = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
        rows.append({"judge": judge, "mean_score": float(x.mean()), "n": int(len(x)), "sem": sem})
    return rows


def scores_by_user_type(
    scores: pd.DataFrame,
    selected: pd.DataFrame,
    judges: Sequence[str],
    weights: pd.DataFrame,
    type_names: Sequence[str],
) -> pd.DataFrame:
    """``method, n_seeds, steps, user_type, judge, n_users, n, mean_score, sem``: each method's
    samples at each training seed's selected checkpoint (pooled over seeds; ``steps`` lists the
    seeds' steps), grouped by each user's dominant type (largest weight).

    Win rates average over users; this shows *whose* taste a method serves: a personalised
    method should gain for every type, a population one mostly for the majority type.
    """
    at = at_selected(with_seeds(scores), selected)
    dominant = weights.idxmax(axis=1)
    known = at["user_id"].isin(dominant.index)
    if not known.all():
        missing = sorted(int(u) for u in at.loc[~known, "user_id"].unique())[:5]
        raise KeyError(f"no user-type weights for sampled users {missing}")
    at = at.assign(user_type=at["user_id"].map(dominant).map(lambda k: type_names[int(k)]))
    steps = selected_steps(selected)
    rows = [
        {
            "method": method,
            "n_seeds": len(steps[method]),
            "steps": "/".join(str(v) for v in steps[method].values()),
            "user_type": user_type,
            "n_users": int(g["user_id"].nunique()),
            **row,
        }
        for (method, user_type), g in at.groupby(["method", "user_type"], sort=True)
        for row in judge_means(g, judges)
    ]
    return pd.DataFrame(
        rows,
        columns=[
            "method",
            "n_seeds",
            "steps",
            "user_type",
            "judge",
            "n_users",
            "n",
            "mean_score",
            "sem",
        ],
    )


def selected_steps(selected: pd.DataFrame) -> dict[str, dict[int, int]]:
    """method -> {training seed: selected step}, seeds ascending."""
    selected = with_seeds(selected)
    out: dict[str, dict[int, int]] = {}
    for row in selected.sort_values(["method", SEED]).itertuples():
        out.setdefault(str(row.method), {})[int(getattr(row, SEED))] = int(row.step)
    return out


def at_selected(scores: pd.DataFrame, selected: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``scores`` at each (method, training seed)'s selected step."""
    keys = with_seeds(selected)[["method", SEED, "step"]]
    return with_seeds(scores).merge(keys, on=["method", SEED, "step"], how="inner")


def first_seed(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of each method's first training seed (base: its only one): the single-replicate
    view the curves and sample grids draw."""
    frame = with_seeds(frame)
    first = frame.groupby("method")[SEED].transform("min")
    return frame[frame[SEED] == first].reset_index(drop=True)


def select_checkpoints(
    metrics: pd.DataFrame, select_by: str, reference: str | None
) -> pd.DataFrame:
    """Per method and training seed the step with the best mean ``select_by`` score (earliest on
    a tie), and what the ``reference`` judge (the oracle) says about that step and about its own
    best step."""
    if select_by not in set(metrics["judge"]):
        raise KeyError(
            f"evaluate.select_by='{select_by}' is not among the scored judges "
            f"{sorted(set(metrics['judge']))}"
        )
    rows = []
    for (method, train_seed), g in with_seeds(metrics).groupby(["method", SEED], sort=False):
        sel = (
            g[g["judge"] == select_by]
            .sort_values(["mean_score", "step"], ascending=[False, True])
            .iloc[0]
        )
        row = {
            "method": method,
            SEED: int(train_seed),
            "step": int(sel["step"]),
            "selected_by": select_by,
            "selected_score": float(sel["mean_score"]),
            "n_steps": int(g["step"].nunique()),
        }
        if reference is not None:
            ref = g[g["judge"] == reference]
            best = ref.sort_values(["mean_score", "step"], ascending=[False, True]).iloc[0]
            row.update(
                {
                    "reference_judge": reference,
                    "reference_score": float(
                        ref.loc[ref["step"] == sel["step"], "mean_score"].iloc[0]
                    ),
                    "reference_best_step": int(best["step"]),
                    "reference_best_score": float(best["mean_score"]),
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


def paired(
    scores: pd.DataFrame,
    method: str,
    method_step: int,
    opponent: str,
    opponent_step: int,
    method_seed: int | None = None,
    opponent_seed: int | None = None,
) -> pd.DataFrame:
    """The two checkpoints' samples joined on (user, prompt, seed), ``_a`` = method, ``_b`` =
    opponent (each of one training seed when given); an error naming the missing triples when
    the two did not sample the same set."""
    scores = with_seeds(scores)
    a = scores[(scores["method"] == method) & (scores["step"] == method_step)]
    b = scores[(scores["method"] == opponent) & (scores["step"] == opponent_step)]
    if method_seed is not None:
        a = a[a[SEED] == method_seed]
    if opponent_seed is not None:
        b = b[b[SEED] == opponent_seed]
    for name, df, step in ((method, a, method_step), (opponent, b, opponent_step)):
        if df.empty:
            raise ValueError(f"no scored samples for method '{name}' at step {step}")
        dup = df.duplicated(PAIR_KEYS)
        if dup.any():
            raise ValueError(
                f"method '{name}' step {step}: {int(dup.sum())} duplicate "
                f"(user_id, prompt_id, seed) rows, e.g. "
                f"{df.loc[dup, PAIR_KEYS].iloc[0].to_dict()}"
            )
    merged = a.merge(b, on=PAIR_KEYS, how="outer", suffixes=("_a", "_b"), indicator=True)
    unpaired = merged[merged["_merge"] != "both"]
    if len(unpaired):
        only_a = int((unpaired["_merge"] == "left_only").sum())
        raise ValueError(
            f"'{method}' (step {method_step}) and '{opponent}' (step {opponent_step}) did not "
            f"sample the same (user_id, prompt_id, seed) triples: {only_a} only in '{method}', "
            f"{len(unpaired) - only_a} only in '{opponent}', e.g. "
            f"{unpaired[PAIR_KEYS].iloc[0].to_dict()}; every method must sample the eval set"
        )
    mismatch = merged["user_group_a"] != merged["user_group_b"]
    if mismatch.any():
        raise ValueError(
            f"user_group differs between '{method}' and '{opponent}' for "
            f"{int(mismatch.sum())} triples, e.g. "
            f"{merged.loc[mismatch, PAIR_KEYS].iloc[0].to_dict()}"
        )
    return merged.drop(columns="_merge").rename(columns={"user_group_a": "user_group"})


def group_rows(df: pd.DataFrame, group: str) -> pd.DataFrame:
    return df if group == "all" else df[df["user_group"] == group]


def win_rates(
    scores: pd.DataFrame,
    pairs: Sequence[Sequence[str]],
    judges: Sequence[str],
    selected: pd.DataFrame,
    n_boot: int,
    confidence: float,
    tie_tolerance: float,
    seed: int,
) -> pd.DataFrame:
    """The win-rate table: every configured pair x judge x user group present in the data."""
    return win_rate_tables(
        scores, pairs, judges, selected, n_boot, confidence, tie_tolerance, seed
    )[0]


def paired_replicates(
    scores: pd.DataFrame, selected: pd.DataFrame, method: str, opponent: str
) -> tuple[pd.DataFrame, list[tuple[int, int, int, int]]]:
    """Every compared replicate pair's samples (``seed_pairs``), stacked with a ``replicate``
    index, and per replicate (method seed, opponent seed, method step, opponent step)."""
    steps = selected_steps(selected)
    for name in (method, opponent):
        if name not in steps:
            raise KeyError(
                f"evaluate.pairs names method '{name}', which has no scores "
                f"(scored: {sorted(steps)})"
            )
    seeds = {m: list(steps[m]) for m in (method, opponent)}
    frames, replicates = [], []
    for k, (sa, sb) in enumerate(seed_pairs(seeds, method, opponent)):
        step_a, step_b = steps[method][sa], steps[opponent][sb]
        both = paired(scores, method, step_a, opponent, step_b, sa, sb)
        frames.append(both.assign(replicate=k))
        replicates.append((sa, sb, step_a, step_b))
    return pd.concat(frames, ignore_index=True), replicates


def win_rate_tables(
    scores: pd.DataFrame,
    pairs: Sequence[Sequence[str]],
    judges: Sequence[str],
    selected: pd.DataFrame,
    n_boot: int,
    confidence: float,
    tie_tolerance: float,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(win rates, win rates per seed)`` for every configured pair x judge x user group.

    The first table's estimate is the mean over training seeds of the per-seed win rate, with a
    three-way bootstrap CI over seeds, users and prompts (``bootstrap.three_way_ci``); the
    second has each replicate pair's own win rate with the two-way (users x prompts) CI, which
    sees no training variance. Shown seed values are blank for base (untrained).
    """
    select_by = str(selected["selected_by"].iloc[0])
    rows, per_seed = [], []
    for method, opponent in pairs:
        both, replicates = paired_replicates(scores, selected, method, opponent)
        steps_a = "/".join(str(r[2]) for r in replicates)
        steps_b = "/".join(str(r[3]) for r in replicates)
        for group in USER_GROUPS:
            g = group_rows(both, group)
            if g.empty:
                continue
            for judge in judges:
                win, tie = outcomes(g[f"{judge}_a"], g[f"{judge}_b"], tie_tolerance)
                rep = g["replicate"].to_numpy()
                users, prompts = g["user_id"].to_numpy(), g["prompt_id"].to_numpy()
                ci = three_way_ci(
                    win,
                    rep,
                    users,
                    prompts,
                    n_boot,
                    rng(seed, "win_rate", method, opponent, judge, group),
                    confidence,
                )
                rows.append(
                    {
                        "method": method,
                        "opponent": opponent,
                        "judge": judge,
                        "users": group,
                        "n": ci.n,
                        "win_rate": ci.estimate,
                        "tie_rate": float(tie.mean()),
                        "ci_low": ci.low,
                        "ci_high": ci.high,
                        "verdict": verdict(ci.low, ci.high),
                        "n_seeds": ci.n_seeds,
                        "n_users": ci.n_users,
                        "n_prompts": ci.n_prompts,
                        "method_steps": steps_a,
                        "opponent_steps": steps_b,
                        "selected_by": select_by,
                    }
                )
                for k, (sa, sb, step_a, step_b) in enumerate(replicates):
                    mask = rep == k
                    if not mask.any():
                        continue
                    one = two_way_ci(
                        win[mask],
                        users[mask],
                        prompts[mask],
                        n_boot,
                        rng(seed, "win_rate", method, opponent, judge, group, "replicate", sa, sb),
                        confidence,
                    )
                    per_seed.append(
                        {
                            "method": method,
                            "method_seed": sa,
                            "opponent": opponent,
                            "opponent_seed": sb,
                            "judge": judge,
                            "users": group,
                            "n": one.n,
                            "win_rate": one.estimate,
                            "tie_rate": float(tie[mask].mean()),
                            "ci_low": one.low,
                            "ci_high": one.high,
                            "verdict": verdict(one.low, one.high),
                            "n_users": one.n_users,
                            "n_prompts": one.n_prompts,
                            "method_step": step_a,
                            "opponent_step": step_b,
                            "selected_by": select_by,
                        }
                    )
    return (
        pd.DataFrame(rows, columns=WIN_RATE_COLUMNS),
        pd.DataFrame(per_seed, columns=PER_SEED_COLUMNS),
    )


def shown_seeds(frame: pd.DataFrame, columns: Sequence[str] = (SEED,)) -> pd.DataFrame:
    """A copy for writing: training-seed columns as nullable integers, blank for base."""
    out = frame.copy()
    for col in columns:
        if col in out.columns:
            values = out[col].astype("Int64")
            out[col] = values.mask(values == UNTRAINED)
    return out
