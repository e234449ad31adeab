"""Win rates, checkpoint selection, judge agreement and their bootstrap CIs: hand-computed cases,
training-seed replicates and the verdict, the coverage of the two-way and three-way bootstraps in
simulations, and the `evaluate` stage on a fake run."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefgen.cli import main as prefgen_main
from prefgen.evaluation.agreement import agreement_scores, judge_agreement
from prefgen.evaluation.bootstrap import (
    bootstrap_means,
    cell_table,
    seed_scale,
    three_way_ci,
    two_way_ci,
)
from prefgen.evaluation.win_rates import (
    checkpoint_metrics,
    outcomes,
    paired,
    scores_by_user_type,
    seed_pairs,
    select_checkpoints,
    verdict,
    win_rate_tables,
    win_rates,
)
from scipy.stats import norm

from tests.eval_fixtures import TYPE_NAMES, FakeUserModelScorer, write_samples, write_truth


def frame(rows: list[tuple]) -> pd.DataFrame:
    """Scores from (method, step, user, group, prompt, seed, judge_x, judge_y) tuples."""
    df = pd.DataFrame(
        rows, columns=["method", "step", "user_id", "user_group", "prompt_id", "seed", "x", "y"]
    )
    df["caption"] = "c" + df["prompt_id"].astype(str)
    df["path"] = "p"
    return df


def two_method_scores() -> pd.DataFrame:
    """Method a vs b on 2 users x 2 prompts; judge x: a wins, wins, ties, loses (u1 unseen)."""
    return frame(
        [
            ("a", 0, 1, "seen", 1, 7, 2.0, 1.0),
            ("a", 0, 1, "seen", 2, 7, 2.0, 1.0),
            ("a", 0, 2, "unseen", 1, 7, 1.0, 1.0),
            ("a", 0, 2, "unseen", 2, 7, 0.0, 1.0),
            ("b", 0, 1, "seen", 1, 7, 1.0, 1.0),
            ("b", 0, 1, "seen", 2, 7, 1.0, 1.0),
            ("b", 0, 2, "unseen", 1, 7, 1.0, 1.0),
            ("b", 0, 2, "unseen", 2, 7, 1.0, 1.0),
        ]
    )


# --- hand-computed cases -------------------------------------------------------------------
def test_outcomes_count_ties_half() -> None:
    win, tie = outcomes(np.array([1.0, 2.0, 3.0, 3.0]), np.array([0.0, 3.0, 3.0, 1.0]), 0.0)
    assert win.tolist() == [1.0, 0.0, 0.5, 1.0]
    assert tie.tolist() == [False, False, True, False]
    win, tie = outcomes(np.array([1.0, 1.05]), np.array([1.08, 1.0]), 0.1)
    assert win.tolist() == [0.5, 0.5] and tie.all()


def test_win_rate_table_hand_computed() -> None:
    scores = two_method_scores()
    sel = select_checkpoints(checkpoint_metrics(scores, ["x", "y"]), "x", None)
    table = win_rates(
        scores,
        [("a", "b")],
        ["x", "y"],
        sel,
        n_boot=500,
        confidence=0.95,
        tie_tolerance=0.0,
        seed=0,
    )
    by = table.set_index(["judge", "users"])
    # judge x: outcomes 1, 1, 0.5, 0 -> 2.5 / 4; one tie in four
    assert by.loc[("x", "all"), "win_rate"] == pytest.approx(0.625)
    assert by.loc[("x", "all"), "tie_rate"] == pytest.approx(0.25)
    assert by.loc[("x", "all"), "n"] == 4
    assert by.loc[("x", "seen"), "win_rate"] == pytest.approx(1.0)
    assert by.loc[("x", "unseen"), "win_rate"] == pytest.approx(0.25)
    # judge y ties everything: exactly 0.5 with a degenerate interval
    assert by.loc[("y", "all"), ["win_rate", "tie_rate", "ci_low", "ci_high"]].tolist() == [
        0.5,
        1.0,
        0.5,
        0.5,
    ]
    # the seen group has one user: the bootstrap can only resample prompts, both wins
    assert by.loc[("x", "seen"), ["ci_low", "ci_high"]].tolist() == [1.0, 1.0]
    lo, hi = by.loc[("x", "all"), ["ci_low", "ci_high"]]
    assert 0.0 <= lo < 0.625 < hi <= 1.0
    assert list(table.columns[:11]) == [
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
    ]
    assert (table["n_seeds"] == 1).all()
    assert by.loc[("y", "all"), "verdict"] == "not shown"  # [0.5, 0.5] touches 0.5
    assert by.loc[("x", "seen"), "verdict"] == "shown"  # [1, 1]


def test_bootstrap_distribution_hand_computed() -> None:
    """Two users (values 1 and 0), one prompt: resampling users gives means 0, 0.5, 1 with
    probabilities 1/4, 1/2, 1/4; the prompt draw changes nothing."""
    reps = bootstrap_means(
        np.array([1.0, 0.0]), np.array([1, 2]), np.array([5, 5]), 20000, np.random.default_rng(0)
    )
    values, counts = np.unique(reps, return_counts=True)
    assert values.tolist() == [0.0, 0.5, 1.0]
    np.testing.assert_allclose(counts / counts.sum(), [0.25, 0.5, 0.25], atol=0.015)


def test_cell_table_and_unbalanced_design() -> None:
    sums, counts = cell_table(np.array([1.0, 0.0, 1.0]), np.array([3, 3, 9]), np.array([1, 1, 2]))
    assert sums.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert counts.tolist() == [[2.0, 0.0], [0.0, 1.0]]
    # user 3 saw prompt 1 only, user 9 prompt 2 only: some draws are empty (NaN) and dropped
    ci = two_way_ci(
        np.array([1.0, 0.0, 1.0]),
        np.array([3, 3, 9]),
        np.array([1, 1, 2]),
        500,
        np.random.default_rng(1),
    )
    assert ci.estimate == pytest.approx(2 / 3) and 0.0 <= ci.low <= ci.high <= 1.0


def test_best_checkpoint_by_pipe_and_oracle_beside_it() -> None:
    """pipe prefers step 200 of method a, the oracle step 100: the comparison uses 200 and the
    table reports what the oracle thought of that choice."""
    rows = []
    for user, group in [(1, "seen"), (2, "seen"), (3, "unseen")]:
        for prompt in (1, 2):
            rows.append(("a", 100, user, group, prompt, 0, 0.0, 1.0))  # x = pipe, y = oracle
            rows.append(("a", 200, user, group, prompt, 0, 2.0, 0.5))
            rows.append(("b", 0, user, group, prompt, 0, 1.0, 0.7))
    scores = frame(rows).rename(columns={"x": "pipe", "y": "oracle"})
    metrics = checkpoint_metrics(scores, ["pipe", "oracle"])
    sel = select_checkpoints(metrics, "pipe", "oracle").set_index("method")
    assert sel.loc["a", "step"] == 200 and sel.loc["a", "reference_best_step"] == 100
    assert sel.loc["a", "reference_score"] == pytest.approx(0.5)
    assert sel.loc["a", "reference_best_score"] == pytest.approx(1.0)
    table = win_rates(
        scores, [("a", "b")], ["pipe", "oracle"], sel.reset_index(), 200, 0.95, 0.0, seed=0
    ).set_index(["judge", "users"])
    assert table.loc[("pipe", "all"), "win_rate"] == 1.0  # at step 200 pipe says a wins
    assert table.loc[("oracle", "all"), "win_rate"] == 0.0  # the truth disagrees
    assert (table["method_steps"] == "200").all() and (table["selected_by"] == "pipe").all()
    m = metrics.set_index(["method", "step", "judge"])
    assert m.loc[("a", 200, "oracle"), "mean_score"] == pytest.approx(0.5)
    assert m.loc[("a", 100, "pipe"), "n"] == 6


def test_scores_by_dominant_user_type_at_the_selected_checkpoint() -> None:
    """Users 1, 2 lean to type 'warm', user 3 to 'cool'; only each method's chosen step counts."""
    rows = []
    for user, group in [(1, "seen"), (2, "seen"), (3, "unseen")]:
        for prompt in (1, 2):
            rows.append(("a", 100, user, group, prompt, 0, 9.0, 9.0))  # not selected
            rows.append(("a", 200, user, group, prompt, 0, 1.0, float(user)))
            rows.append(("b", 0, user, group, prompt, 0, 0.0, float(prompt)))
    scores = frame(rows).rename(columns={"x": "pipe", "y": "oracle"})
    sel = select_checkpoints(checkpoint_metrics(scores, ["pipe"]), "pipe", None)
    sel.loc[sel["method"] == "a", "step"] = 200
    weights = pd.DataFrame([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]], index=[1, 2, 3])
    table = scores_by_user_type(scores, sel, ["pipe", "oracle"], weights, ["warm", "cool"])
    t = table.set_index(["method", "user_type", "judge"])
    assert t.loc[("a", "warm", "oracle"), "mean_score"] == pytest.approx(1.5)  # users 1, 2
    assert t.loc[("a", "cool", "oracle"), "mean_score"] == pytest.approx(3.0)
    assert t.loc[("a", "warm", "oracle"), "n_users"] == 2
    assert t.loc[("a", "warm", "oracle"), "n"] == 4
    assert t.loc[("b", "cool", "oracle"), "mean_score"] == pytest.approx(1.5)
    assert set(t.reset_index()["steps"]) == {"0", "200"}
    assert (t["n_seeds"] == 1).all()
    with pytest.raises(KeyError, match=r"\[3\]"):
        scores_by_user_type(scores, sel, ["pipe"], weights.loc[[1, 2]], ["warm", "cool"])


# --- training seeds and the verdict -------------------------------------------------------------
def test_verdict_needs_the_interval_to_exclude_one_half() -> None:
    assert verdict(0.51, 0.70) == "shown"
    assert verdict(0.30, 0.49) == "reversed"
    assert verdict(0.50, 0.70) == "not shown"  # touching 0.5 is not enough
    assert verdict(0.30, 0.50) == "not shown"
    assert verdict(0.40, 0.60) == "not shown"


def seeded_scores() -> pd.DataFrame:
    """Method a, two training seeds, against untrained base on 3 users x 4 prompts (judge x):
    seed 0 wins all 12 comparisons, seed 1 wins one, ties one and loses ten; judge y: a always
    wins."""
    rows = []
    for user in (1, 2, 3):
        for prompt in (1, 2, 3, 4):
            cell = (user - 1) * 4 + prompt - 1
            rows.append(("base", -1, 0, user, "seen", prompt, 7, 1.0, 0.0))
            rows.append(("a", 0, 10, user, "seen", prompt, 7, 2.0, 1.0))
            x1 = 2.0 if cell == 0 else (1.0 if cell == 5 else 0.0)
            rows.append(("a", 1, 10, user, "seen", prompt, 7, x1, 1.0))
    df = pd.DataFrame(
        rows,
        columns=[
            "method",
            "train_seed",
            "step",
            "user_id",
            "user_group",
            "prompt_id",
            "seed",
            "x",
            "y",
        ],
    )
    return df.assign(caption="c", path="p")


def test_win_rate_is_the_mean_over_seeds_and_per_seed_rows_show_the_spread() -> None:
    scores = seeded_scores()
    sel = select_checkpoints(checkpoint_metrics(scores, ["x", "y"]), "x", None)
    assert sorted(zip(sel["method"], sel["train_seed"], strict=True)) == [
        ("a", 0),
        ("a", 1),
        ("base", -1),
    ]
    wins, per_seed = win_rate_tables(scores, [("a", "base")], ["x", "y"], sel, 400, 0.95, 0.0, 0)
    w = wins.set_index(["judge", "users"])
    # seed 0: 12/12; seed 1: (1 + 0.5) / 12; the table averages the two seeds' win rates
    assert w.loc[("x", "all"), "win_rate"] == pytest.approx((1.0 + 1.5 / 12) / 2)
    assert w.loc[("x", "all"), ["n_seeds", "n", "n_users", "n_prompts"]].tolist() == [2, 24, 3, 4]
    assert w.loc[("x", "all"), "method_steps"] == "10/10"
    assert w.loc[("x", "all"), "opponent_steps"] == "0/0"
    # the seeds disagree, so with two seeds nothing is shown; judge y is unanimous
    assert w.loc[("x", "all"), "verdict"] == "not shown"
    assert w.loc[("y", "all"), ["win_rate", "verdict"]].tolist() == [1.0, "shown"]
    p = per_seed[per_seed["judge"] == "x"].set_index(["method_seed", "users"])
    assert p.loc[(0, "all"), "win_rate"] == pytest.approx(1.0)
    assert p.loc[(1, "all"), "win_rate"] == pytest.approx(1.5 / 12)
    assert p.loc[(0, "all"), "verdict"] == "shown"
    assert p.loc[(1, "all"), "verdict"] == "reversed"
    assert set(per_seed["opponent_seed"]) == {-1} and (per_seed["n"] == 12).all()


def test_seed_pairs_pair_base_with_every_seed_and_methods_seed_by_seed() -> None:
    seeds = {"base": [-1], "a": [0, 1, 2], "b": [0, 1, 2], "c": [0, 1]}
    assert seed_pairs(seeds, "a", "base") == [(0, -1), (1, -1), (2, -1)]
    assert seed_pairs(seeds, "base", "b") == [(-1, 0), (-1, 1), (-1, 2)]
    assert seed_pairs(seeds, "a", "b") == [(0, 0), (1, 1), (2, 2)]
    with pytest.raises(ValueError, match="must share train.seeds"):
        seed_pairs(seeds, "a", "c")


def test_unpaired_samples_are_an_error() -> None:
    scores = two_method_scores()
    scores = scores[
        ~((scores["method"] == "b") & (scores["prompt_id"] == 2) & (scores["user_id"] == 2))
    ]
    with pytest.raises(ValueError, match=r"did not sample the same.*1 only in 'a', 0 only in 'b'"):
        paired(scores, "a", 0, "b", 0)


def test_unknown_method_in_pairs_is_named() -> None:
    scores = two_method_scores()
    sel = select_checkpoints(checkpoint_metrics(scores, ["x"]), "x", None)
    with pytest.raises(KeyError, match="method 'ppd', which has no scores"):
        win_rates(scores, [("a", "ppd")], ["x"], sel, 100, 0.95, 0.0, 0)


def test_agreement_hand_computed() -> None:
    ref_a, ref_b = np.array([1.0, 0.0, 2.0, 1.0]), np.array([0.0, 1.0, 2.0, 0.0])
    same, tie = agreement_scores(ref_a * 3, ref_b * 3, ref_a, ref_b, 0.0)
    assert tie.tolist() == [False, False, True, False]  # the reference tie is excluded later
    assert same[~tie].tolist() == [1.0, 1.0, 1.0]
    flipped, _ = agreement_scores(-ref_a, -ref_b, ref_a, ref_b, 0.0)
    assert flipped[~tie].tolist() == [0.0, 0.0, 0.0]
    const, _ = agreement_scores(np.ones(4), np.ones(4), ref_a, ref_b, 0.0)
    assert const[~tie].tolist() == [0.5, 0.5, 0.5]


def test_judge_agreement_table() -> None:
    """Reference x, judge y: hand-counted agreement per user group, x's tie excluded."""
    rows = []
    for user, group, prompt, x_a, x_b, y_a, y_b in [
        (1, "seen", 1, 2.0, 1.0, 5.0, 0.0),  # both say a: 1
        (1, "seen", 2, 0.0, 1.0, 0.0, 3.0),  # both say b: 1
        (2, "unseen", 1, 3.0, 1.0, 0.0, 1.0),  # x says a, y says b: 0
        (2, "unseen", 2, 1.0, 1.0, 4.0, 0.0),  # x ties: excluded
        (3, "unseen", 1, 2.0, 1.0, 1.0, 1.0),  # y ties: 0.5
    ]:
        rows += [
            ("a", 0, user, group, prompt, 0, x_a, y_a),
            ("b", 0, user, group, prompt, 0, x_b, y_b),
        ]
    scores = frame(rows)
    sel = select_checkpoints(checkpoint_metrics(scores, ["x", "y"]), "x", "x")
    table = judge_agreement(
        scores, [("a", "b")], ["x", "y"], "x", sel, 300, 0.95, 0.0, seed=0
    ).set_index("users")
    assert set(table["judge"]) == {"y"} and set(table["reference"]) == {"x"}
    assert table.loc["seen", ["agreement", "n"]].tolist() == [1.0, 2]
    assert table.loc["unseen", ["agreement", "n"]].tolist() == [0.25, 2]
    assert table.loc["all", ["agreement", "n", "n_reference_ties"]].tolist() == [0.625, 4, 1]


# --- coverage of the bootstrap ---------------------------------------------------------------
def coverage(seed: int, resample_prompts: bool, reps: int = 200) -> float:
    """Share of 95% CIs covering the true win rate in a world with user AND prompt effects:
    x_up = 1[mu + a_u + b_p + e_up > 0], whose population mean is Phi(mu / sd)."""
    gen = np.random.default_rng(seed)
    n_u, n_p, su, sp, se, mu = 30, 20, 0.8, 0.8, 1.0, 0.3
    truth = norm.cdf(mu / np.sqrt(su**2 + sp**2 + se**2))
    users, prompts = np.repeat(np.arange(n_u), n_p), np.tile(np.arange(n_p), n_u)
    hits = 0
    for _ in range(reps):
        a, b = gen.normal(0, su, n_u), gen.normal(0, sp, n_p)
        x = (mu + a[users] + b[prompts] + gen.normal(0, se, n_u * n_p) > 0).astype(float)
        ci = two_way_ci(x, users, prompts, 400, gen, 0.95, resample_prompts=resample_prompts)
        hits += ci.low <= truth <= ci.high
    return hits / reps


def seed_coverage(
    seed: int, resample_seeds: bool, n_seeds: int = 3, sc: float = 0.5, reps: int = 200
) -> tuple[float, float]:
    """(share of 95% CIs covering the true win rate, mean CI width) in a world with training-
    seed, user and prompt effects: x_sup = 1[mu + c_s + a_u + b_p + e_sup > 0], whose population
    mean over seeds, users and prompts is Phi(mu / sd). Every seed sees the same users and
    prompts, as the training replicates sample the same evaluation set."""
    gen = np.random.default_rng(seed)
    n_u, n_p, su, sp, se, mu = 30, 16, 0.5, 0.5, 1.0, 0.3
    truth = norm.cdf(mu / np.sqrt(sc**2 + su**2 + sp**2 + se**2))
    s, u, p = (
        g.ravel()
        for g in np.meshgrid(np.arange(n_seeds), np.arange(n_u), np.arange(n_p), indexing="ij")
    )
    hits, width = 0, 0.0
    for _ in range(reps):
        c, a, b = gen.normal(0, sc, n_seeds), gen.normal(0, su, n_u), gen.normal(0, sp, n_p)
        x = (mu + c[s] + a[u] + b[p] + gen.normal(0, se, s.size) > 0).astype(float)
        ci = three_way_ci(x, s, u, p, 400, gen, 0.95, resample_seeds=resample_seeds)
        hits += ci.low <= truth <= ci.high
        width += ci.high - ci.low
    return hits / reps, width / reps


def test_three_way_bootstrap_covers_training_variance() -> None:
    """Three training seeds whose effect (sd 0.5 on the latent scale) is as large as the user
    and prompt effects: the users x prompts bootstrap of the same seed-averaged win rate ignores
    the seeds and under-covers clearly (measured 0.65); the three-way bootstrap covers at least
    nominally (measured 0.96). Without the small-sample widening (seed_scale) it measured
    0.835: three seeds alone give too narrow a percentile interval."""
    three_way, width = seed_coverage(seed=7, resample_seeds=True)
    two_way, width_two = seed_coverage(seed=7, resample_seeds=False)
    assert 0.92 <= three_way <= 1.0, three_way
    assert two_way < 0.80, two_way
    assert width > width_two


def test_three_way_bootstrap_costs_little_when_seeds_agree() -> None:
    """No seed effect: still nominal or conservative, and the interval only slightly wider than
    the users x prompts one (the widening scales the seeds' observed spread, which is small)."""
    three_way, width = seed_coverage(seed=11, resample_seeds=True, sc=0.0)
    two_way, width_two = seed_coverage(seed=11, resample_seeds=False, sc=0.0)
    assert three_way >= 0.92 and two_way >= 0.90, (three_way, two_way)
    assert width < 1.25 * width_two, (width, width_two)


def test_seed_scale_values() -> None:
    assert seed_scale(1, 0.95) == 1.0
    assert seed_scale(3, 0.95) == pytest.approx(4.3027 / 1.95996 * np.sqrt(1.5), rel=1e-3)
    assert seed_scale(5, 0.95) == pytest.approx(2.7764 / 1.95996 * np.sqrt(1.25), rel=1e-3)
    # one seed: the three-way interval is the two-way one on the same draws
    gen_a, gen_b = np.random.default_rng(3), np.random.default_rng(3)
    x = np.random.default_rng(0).integers(0, 2, 60).astype(float)
    users, prompts = np.repeat(np.arange(6), 10), np.tile(np.arange(10), 6)
    one = three_way_ci(x, np.zeros(60, dtype=int), users, prompts, 300, gen_a)
    gen_b.multinomial(1, [1.0], size=300)  # the one-seed draw three_way_ci makes first
    two = two_way_ci(x, users, prompts, 300, gen_b)
    assert (one.estimate, one.low, one.high) == pytest.approx((two.estimate, two.low, two.high))


def test_two_way_bootstrap_coverage_is_near_nominal() -> None:
    """200 simulated studies: the two-way CI covers 95% +- 4.5 points (3 binomial s.e. of a
    200-rep estimate; the pigeonhole bootstrap is mildly conservative). Resampling users only
    ignores the prompt effect and under-covers clearly (measured about 0.75)."""
    two_way = coverage(seed=7, resample_prompts=True)
    users_only = coverage(seed=7, resample_prompts=False)
    assert 0.905 <= two_way <= 0.995, two_way
    assert users_only < 0.88, users_only


# --- the evaluate stage on a fake run ----------------------------------------------------------
EVAL_PARAMS = {
    "evaluate": {
        "pairs": [["pipe", "base"], ["pipe", "dpo"], ["dpo", "base"]],
        "select_by": "pipe",
        "reference_judge": "oracle",
        "bootstrap": 200,
        "confidence": 0.95,
        "tie_tolerance": 0.0,
        "grid": {"types_from": "truth", "prompts": 3, "annotate": "oracle"},
    },
    "judges": ["oracle", "pipe", "population", "clip_score"],
    "scale": "smoke",
    "seed": 0,
    "grid_types": 2,
}
USERS = [10, 11, 12, 13, 14, 15]
#: base once, the trained methods on two training seeds (as samples/ and scores/ lay them out)
MODELS = ["base", "dpo/seed0", "dpo/seed1", "pipe/seed0", "pipe/seed1"]


@pytest.fixture()
def scored_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    module = types.ModuleType("prefgen.user_model.scorer")
    module.UserModelScorer = FakeUserModelScorer
    monkeypatch.setitem(sys.modules, "prefgen.user_model.scorer", module)
    run = tmp_path / "run"
    write_truth(run / "data" / "truth", USERS)
    indexes = write_samples(
        run,
        {model: [0] if model == "base" else [100, 200] for model in MODELS},
        USERS,
        [1, 2, 3, 4],
    )
    for model, index in indexes.items():
        judge = {"judge": {"judges": EVAL_PARAMS["judges"], "batch_size": 64}}
        assert (
            prefgen_main(
                [
                    "judge",
                    "--params",
                    json.dumps(judge),
                    "--index",
                    str(index),
                    "--run-dir",
                    str(run),
                    "--truth",
                    str(run / "data" / "truth"),
                    "--out",
                    str(run / "scores" / f"{model}.parquet"),
                ]
            )
            == 0
        )
    return run


def run_evaluate(run: Path, params: dict) -> int:
    return prefgen_main(
        [
            "evaluate",
            "--params",
            json.dumps(params),
            "--scores",
            *[str(run / "scores" / f"{m}.parquet") for m in MODELS],
            "--run-dir",
            str(run),
            "--truth",
            str(run / "data" / "truth"),
            "--tables",
            str(run / "tables"),
            "--figures",
            str(run / "figures"),
        ]
    )


def test_evaluate_stage_writes_tables_and_figures(scored_run: Path) -> None:
    assert run_evaluate(scored_run, EVAL_PARAMS) == 0
    tables = scored_run / "tables"
    for stem in [
        "win_rates",
        "win_rates_per_seed",
        "checkpoint_metrics",
        "best_checkpoints",
        "judge_agreement",
    ]:
        for ext in (".csv", ".md", ".tex"):
            assert (tables / f"{stem}{ext}").stat().st_size > 0
    wins = pd.read_csv(tables / "win_rates.csv")
    assert len(wins) == 3 * 4 * 3  # pairs x judges x {all, seen, unseen}
    assert set(wins["users"]) == {"all", "seen", "unseen"}
    assert ((wins["ci_low"] <= wins["win_rate"]) & (wins["win_rate"] <= wins["ci_high"])).all()
    assert (wins["n_seeds"] == 2).all()
    assert (wins.loc[wins["users"] == "all", "n"] == 2 * len(USERS) * 4).all()
    assert set(wins["verdict"]) <= {"shown", "not shown", "reversed"}
    per_seed = pd.read_csv(tables / "win_rates_per_seed.csv")
    assert len(per_seed) == 2 * len(wins)  # one row per seed replicate
    assert (per_seed.loc[per_seed["users"] == "all", "n"] == len(USERS) * 4).all()
    pipe_dpo = per_seed[(per_seed["method"] == "pipe") & (per_seed["opponent"] == "dpo")]
    assert (pipe_dpo["method_seed"] == pipe_dpo["opponent_seed"]).all()
    assert per_seed.loc[per_seed["opponent"] == "base", "opponent_seed"].isna().all()
    # the mean over seeds of the per-seed win rates is the headline estimate
    mean = per_seed.groupby(["method", "opponent", "judge", "users"])["win_rate"].mean()
    np.testing.assert_allclose(
        wins.set_index(["method", "opponent", "judge", "users"])["win_rate"],
        mean.loc[wins.set_index(["method", "opponent", "judge", "users"]).index],
    )
    metrics = pd.read_csv(tables / "checkpoint_metrics.csv")
    assert list(metrics.columns[:5]) == ["method", "train_seed", "step", "judge", "mean_score"]
    assert len(metrics) == (1 + 2 * 2 + 2 * 2) * 4
    best = pd.read_csv(tables / "best_checkpoints.csv")
    assert len(best) == 1 + 2 + 2 and best.loc[best["method"] == "base", "train_seed"].isna().all()
    agree = pd.read_csv(tables / "judge_agreement.csv").set_index(["judge", "users"])
    # the fake pipe judge has the true tastes; population likes bright images for everyone
    assert agree.loc[("pipe", "all"), "agreement"] == 1.0
    assert agree.loc[("population", "all"), "agreement"] == pytest.approx(0.5, abs=0.1)
    assert "stand-in" in (tables / "win_rates.md").read_text()
    figs = sorted(p.name for p in (scored_run / "figures").iterdir())
    assert figs == ["checkpoint_curves.png", "samples_user_type0.png", "samples_user_type1.png"]


def test_evaluate_is_deterministic(scored_run: Path) -> None:
    assert run_evaluate(scored_run, EVAL_PARAMS) == 0
    first = {p.name: p.read_bytes() for p in (scored_run / "tables").iterdir()}
    figs = {p.name: p.read_bytes() for p in (scored_run / "figures").iterdir()}
    assert run_evaluate(scored_run, EVAL_PARAMS) == 0
    assert first == {p.name: p.read_bytes() for p in (scored_run / "tables").iterdir()}
    assert figs == {p.name: p.read_bytes() for p in (scored_run / "figures").iterdir()}


def test_evaluate_grid_count_must_match_the_rule(scored_run: Path) -> None:
    params = json.loads(json.dumps(EVAL_PARAMS))
    params["grid_types"] = 3
    with pytest.raises(ValueError, match=f"{len(TYPE_NAMES)} user types found"):
        run_evaluate(scored_run, params)
