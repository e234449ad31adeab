"""Atomic writes: an interrupted write leaves nothing Snakemake would take as done."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pandas as pd
import pytest
from prefgen.core.io import atomic_dir, atomic_path, write_parquet


def test_failed_write_leaves_no_output_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out" / "table.parquet"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half a file")
        raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_failed_directory_write_keeps_the_previous_version(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "weights.safetensors").write_text("v1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights.safetensors").write_text("v2, half")
        raise RuntimeError("killed mid-write")
    assert (target / "weights.safetensors").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_outputs_get_the_umask_mode_not_the_private_temporary_mode(tmp_path: Path) -> None:
    """A results/ bundle is handed to reviewers: files must not stay 0600 like mkstemp's."""
    old = os.umask(0o022)
    try:
        write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "t.parquet").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
