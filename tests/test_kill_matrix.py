"""Kill anywhere, rerun, same result: the CI share of the kill matrix (tests/faults/kill_matrix.py,
the whole matrix is `make kill-matrix`).

On a copy of the finished smoke run (the e2e tests' `smoke_run`), one `train_adapter` job (it
resumes from its checkpoints) and one `judge` job are forced to run again and SIGKILLed at a
seeded moment; the rerun a user would make completes without manual cleanup, every table except
the measured wall seconds is byte-identical to the uninterrupted run's, and the rerun's bundle
verifies.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.kill_matrix import run_matrix


@pytest.mark.slow
@pytest.mark.e2e
def test_killed_jobs_rerun_to_identical_tables(smoke_run: Path, tmp_path: Path) -> None:
    log: list[str] = []
    cases = run_matrix(
        smoke_run, tmp_path, [("train_adapter", "job"), ("judge", "job")], seed=0, log=log.append
    )
    for case in cases:
        assert case.killed, (case.rule, case.note, log)
        assert case.attempt_exit != 0, (case.rule, "Snakemake did not see the job fail")
        assert case.rerun_exit == 0, (case.rule, case.note, log)
        assert case.compared > 10, (case.rule, case.compared)  # the tables, measured ones aside
        assert case.differing == [] and case.manifest_problems == [], case
        assert case.identical
    train = cases[0]
    # a trainer resumes from the last checkpoint it had written, else starts from scratch
    expected = (
        f"checkpoint {train.checkpoints_at_kill[-1]}" if train.checkpoints_at_kill else ("scratch")
    )
    assert train.resumed_from == expected, train
    assert cases[1].resumed_from == "scratch"
