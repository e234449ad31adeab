"""``prefgen compare-verdicts``: two runs' verdicts, row by row, and an exit status a reviewer's
script can act on (1 only when a comparison is shown in one run and reversed in the other); and
``--seed-halves``, which recomputes the evaluate rule's table on disjoint halves of one run's
training seeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefgen.cli import main as prefgen_main
from prefgen.evaluation.replication import (
    ROW_KEYS,
    agreement,
    compare_verdicts,
    halves_summary,
    margin,
    read_win_rates,
    seed_halves,
    seed_splits,
)

from tests.test_win_rates import EVAL_PARAMS


def table(rows: list[tuple[str, str, str, str, float, float, float]]) -> pd.DataFrame:
    """A ``win_rates.csv``-shaped frame from (method, opponent, judge, users, rate, low, high)."""
    from prefgen.evaluation.win_rates import verdict

    return pd.DataFrame(
        [
            {
                "method": m,
                "opponent": o,
                "judge": j,
                "users": u,
                "n_seeds": 5,
                "n": 1200,
                "win_rate": w,
                "ci_low": lo,
                "ci_high": hi,
                "verdict": verdict(lo, hi),
            }
            for m, o, j, u, w, lo, hi in rows
        ]
    )


def write_run(root: Path, frame: pd.DataFrame) -> Path:
    (root / "tables").mkdir(parents=True)
    frame.to_csv(root / "tables" / "win_rates.csv", index=False)
    return root


RUN_A = [
    ("pipe", "base", "oracle", "all", 0.65, 0.55, 0.75),
    ("pipe", "dpo", "oracle", "all", 0.65, 0.55, 0.75),
    ("dpo", "base", "oracle", "all", 0.56, 0.45, 0.67),
    ("premier", "base", "clip_score", "all", 0.33, 0.24, 0.42),
]


def test_agreement_classes() -> None:
    assert agreement("shown", "shown") == "same"
    assert agreement("not shown", "not shown") == "same"
    assert agreement("shown", "not shown") == "boundary"
    assert agreement("not shown", "reversed") == "boundary"
    assert agreement("reversed", "shown") == "contradiction"


def test_margin_is_the_distance_from_one_half_to_the_nearer_end() -> None:
    low = pd.Series([0.55, 0.20, 0.45, 0.49])
    high = pd.Series([0.75, 0.40, 0.60, 0.70])
    assert margin(low, high).round(6).tolist() == [0.05, 0.10, -0.05, -0.01]


def test_rows_are_classified_and_margins_kept() -> None:
    b = [
        ("pipe", "base", "oracle", "all", 0.64, 0.54, 0.74),  # shown both: same
        ("pipe", "dpo", "oracle", "all", 0.61, 0.49, 0.72),  # shown -> not shown: boundary
        ("dpo", "base", "oracle", "all", 0.57, 0.45, 0.68),  # not shown both: same
        ("premier", "base", "clip_score", "all", 0.60, 0.52, 0.70),  # reversed -> shown
    ]
    compared = compare_verdicts(table(RUN_A), table(b)).set_index(["method", "opponent"])
    assert compared.loc[("pipe", "base"), "agreement"] == "same"
    assert compared.loc[("pipe", "dpo"), "agreement"] == "boundary"
    assert compared.loc[("pipe", "dpo"), "margin_b"] == pytest.approx(-0.01)
    assert compared.loc[("dpo", "base"), "agreement"] == "same"
    assert compared.loc[("premier", "base"), "agreement"] == "contradiction"


def test_a_comparison_in_one_run_only_is_an_error_naming_it() -> None:
    b = table(RUN_A[:3])
    with pytest.raises(ValueError, match=r"premier vs base / clip_score / all \(only in run a\)"):
        compare_verdicts(table(RUN_A), b)


def test_cli_exit_status_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_run(tmp_path / "a", table(RUN_A))
    boundary = [*RUN_A[:1], ("pipe", "dpo", "oracle", "all", 0.61, 0.49, 0.72), *RUN_A[2:]]
    b = write_run(tmp_path / "b", table(boundary))
    out = tmp_path / "compared.csv"
    assert prefgen_main(["compare-verdicts", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "all: 3 same, 1 boundary, 0 contradiction (of 4)" in printed
    assert "| pipe     | dpo" in printed  # the differing row is listed
    assert pd.read_csv(out)["agreement"].tolist().count("boundary") == 1

    flipped = [*RUN_A[:3], ("premier", "base", "clip_score", "all", 0.6, 0.52, 0.7)]
    c = write_run(tmp_path / "c", table(flipped))
    with pytest.raises(SystemExit) as stop:
        prefgen_main(["compare-verdicts", str(a), str(c / "tables" / "win_rates.csv")])
    assert stop.value.code == 1


def test_bad_input_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert prefgen_main(["compare-verdicts", str(tmp_path / "nowhere"), str(tmp_path)]) == 2
    assert "nowhere: expected a run folder with tables/win_rates.csv" in capsys.readouterr().err
    odd = table(RUN_A).assign(verdict="maybe")
    run = write_run(tmp_path / "odd", odd)
    with pytest.raises(ValueError, match=r"odd/tables/win_rates.csv: unknown verdicts \['maybe'\]"):
        read_win_rates(run)
    twice = write_run(tmp_path / "twice", pd.concat([table(RUN_A), table(RUN_A[:1])]))
    with pytest.raises(ValueError, match="appears more than once"):
        read_win_rates(twice)


def test_seed_splits_are_disjoint_halves_without_mirror_twins() -> None:
    splits = seed_splits([3, 1, 0, 2, 4], n_splits=100, seed=0)
    # 5 seeds: halves of 2, one seed out; 5 * 3 = 15 unordered pairs of disjoint halves
    assert len(splits) == 15
    seen = set()
    for a, b in splits:
        assert len(a) == len(b) == 2 and not set(a) & set(b) and min(a) < min(b)
        key = frozenset([frozenset(a), frozenset(b)])
        assert key not in seen
        seen.add(key)
    assert seed_splits([0, 1, 2, 3, 4], 4, seed=0) == splits[:4]
    assert len(seed_splits(list(range(10)), 1000, seed=0)) == 126  # C(10, 5) / 2
    with pytest.raises(ValueError, match="at least 4 training seeds"):
        seed_splits([0, 1, 2], 5, seed=0)


#: the evaluate settings of the win-rate tests' fake run (the sample grid is not drawn here)
EVALUATE = {k: v for k, v in EVAL_PARAMS["evaluate"].items() if k != "grid"}
JUDGES = ["oracle", "pipe"]


def fake_scores(train_seeds: list[int]) -> dict[str, pd.DataFrame]:
    """Score files of a fake run: base, and dpo and pipe per training seed at two steps. pipe is
    far better than base for every seed; dpo equals base up to noise."""
    gen = np.random.default_rng(5)
    users, prompts = np.arange(12), np.arange(6)
    user_effect = gen.normal(0, 1, users.size)

    def frame(method: str, train_seed: int, step: int, lift: float) -> pd.DataFrame:
        u, p = np.meshgrid(users, prompts, indexing="ij")
        u, p = u.ravel(), p.ravel()
        base = user_effect[u] + 0.3 * p
        noise = gen.normal(0, 1, u.size)
        return pd.DataFrame(
            {
                "method": method,
                "train_seed": train_seed,
                "step": step,
                "user_id": 100 + u,
                "user_group": np.where(u % 3 == 0, "unseen", "seen"),
                "prompt_id": p,
                "caption": [f"prompt {i}" for i in p],
                "seed": 7 * p + u,
                "path": [f"samples/{method}/{i}.png" for i in range(u.size)],
                "oracle": base + lift + noise,
                "pipe": base + lift + noise + gen.normal(0, 0.1, u.size),
            }
        )

    files = {"base.parquet": frame("base", -1, 0, 0.0)}
    for s in train_seeds:
        for method, lift in (("dpo", 0.0), ("pipe", 4.0)):
            files[f"{method}/seed{s}.parquet"] = pd.concat(
                [frame(method, s, step, lift) for step in (10, 20)], ignore_index=True
            )
    return files


def fake_run(root: Path, train_seeds: list[int]) -> tuple[Path, pd.DataFrame]:
    """A run folder with score files, MANIFEST.json's evaluate settings and the win-rate table
    the evaluate rule would write from them."""
    from prefgen.evaluation.evaluate import load_scores
    from prefgen.evaluation.win_rates import checkpoint_metrics, select_checkpoints, win_rates

    paths = []
    for name, frame in fake_scores(train_seeds).items():
        path = root / "scores" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
        paths.append(str(path))
    (root / "MANIFEST.json").write_text(json.dumps({"config": {"evaluate": EVALUATE, "seed": 0}}))
    scores = load_scores(sorted(paths), [], JUDGES)
    selected = select_checkpoints(checkpoint_metrics(scores, JUDGES), "pipe", "oracle")
    wins = win_rates(scores, EVALUATE["pairs"], JUDGES, selected, 200, 0.95, 0.0, 0)
    write_run(root, wins)
    return root, scores


def test_seed_halves_recompute_the_evaluate_table_on_each_half(tmp_path: Path) -> None:
    from prefgen.evaluation.win_rates import checkpoint_metrics, select_checkpoints, win_rates

    run, scores = fake_run(tmp_path / "run", [0, 1, 2, 3])
    halves = seed_halves(run, n_splits=10)
    assert sorted(halves["split"].unique()) == ["0 1", "0 2", "0 3"]  # C(4, 2) / 2 splits

    # half "0 2" of the fake run, through the evaluate rule's functions on its seeds only
    part = scores[scores["train_seed"].isin([0, 2, -1])]
    selected = select_checkpoints(checkpoint_metrics(part, JUDGES), "pipe", "oracle")
    direct = win_rates(part, EVALUATE["pairs"], JUDGES, selected, 200, 0.95, 0.0, 0)
    mine = halves[halves["split"] == "0 2"].merge(direct, on=ROW_KEYS)
    assert len(mine) == len(direct) == 18  # 3 pairs x 2 judges x 3 user groups
    assert np.allclose(mine["win_rate_a"], mine["win_rate"])
    assert np.allclose(mine["ci_low_a"], mine["ci_low"])
    assert (mine["verdict_a"] == mine["verdict"]).all()

    text, moved = halves_summary(halves)
    strong = moved[(moved["method"] == "pipe") & (moved["opponent"] == "base")]
    assert (strong["shown_in"] == 1).all() and (strong["moved"] == 0).all()
    assert "all: " in text and "of 6 verdicts the same per split" in text


def test_seed_halves_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = fake_run(tmp_path / "run", [0, 1, 2, 3])
    out = tmp_path / "halves.csv"
    args = ["compare-verdicts", str(run), "--seed-halves", "2", "--users", "all"]
    assert prefgen_main([*args, "--out", str(out)]) == 0
    assert "of 6 verdicts the same per split" in capsys.readouterr().out
    assert pd.read_csv(out)["split"].nunique() == 2
    assert prefgen_main(["compare-verdicts", str(run)]) == 2
    assert "either a second run or --seed-halves" in capsys.readouterr().err
    few, _ = fake_run(tmp_path / "few", [0, 1, 2])
    assert prefgen_main(["compare-verdicts", str(few), "--seed-halves", "3"]) == 2
    assert "at least 4 training seeds" in capsys.readouterr().err
