"""``prefgen compare-verdicts``: two runs' verdicts, row by row, and an exit status a reviewer's
script can act on (1 only when a comparison is shown in one run and reversed in the other)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from prefgen.cli import main as prefgen_main
from prefgen.evaluation.replication import agreement, compare_verdicts, margin, read_win_rates


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
