"""Kill anywhere, rerun, same result: the CI share of the kill matrix (tests/faults/kill_matrix.py,
the whole matrix is `make kill-matrix`).

On a copy of the finished smoke run (the e2e tests' `smoke_run`), one `train_adapter` job (killed
a seeded fraction of a second after its first checkpoint, so it resumes) and one `judge` job (at
a seeded moment of its reference duration) are forced to run again and SIGKILLed; the rerun a
user would make completes without manual cleanup, every table except the measured wall seconds
is byte-identical to the uninterrupted run's, and the rerun's bundle verifies.
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
        smoke_run, tmp_path, [("train_adapter", "ckpt"), ("judge", "job")], seed=0, log=log.append
    )
    for case in cases:
        assert case.killed, (case.rule, case.note, log)
        assert case.attempt_exit != 0, (case.rule, "Snakemake did not see the job fail")
        assert case.rerun_exit == 0, (case.rule, case.note, log)
        assert case.compared > 10, (case.rule, case.compared)  # the tables, measured ones aside
        assert case.differing == [] and case.manifest_problems == [], case
        assert case.identical
    train = cases[0]
    # killed after its first checkpoint: the rerun resumes from the last checkpoint written
    assert train.checkpoints_at_kill, train
    assert train.resumed_from == f"checkpoint {train.checkpoints_at_kill[-1]}", train
    assert cases[1].resumed_from == "scratch"
