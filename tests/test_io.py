"""Atomic writes: an interrupted write leaves nothing Snakemake would take as done."""

from __future__ import annotations

import json
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


def test_save_tensors_is_byte_identical_whatever_the_dict_orders(tmp_path: Path) -> None:
    """safetensors keeps metadata in a hash map whose order changes per call; save_tensors
    sorts it, so equal tensors and metadata always give equal bytes (and still load)."""
    import hashlib

    import torch
    from prefgen.core.io import load_tensors, save_tensors
    from safetensors import safe_open

    tensors = {
        "b": torch.arange(6.0).reshape(2, 3).T,
        "a": torch.ones(4, dtype=torch.bfloat16),
        "ids": torch.arange(3),
    }
    meta = {f"key_{c}": f"value {c}" for c in "qwertyuiop"}
    digests = set()
    for i in range(8):
        order = list(meta) if i % 2 else list(reversed(meta))
        keys = list(tensors) if i % 2 else list(reversed(tensors))
        path = tmp_path / f"w{i}.safetensors"
        save_tensors({k: tensors[k] for k in keys}, path, metadata={k: meta[k] for k in order})
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    loaded = load_tensors(tmp_path / "w0.safetensors")
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with safe_open(str(tmp_path / "w0.safetensors"), "pt") as f:
        assert f.metadata() == meta
    raw = (tmp_path / "w0.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert list(header["__metadata__"]) == sorted(meta)


@pytest.mark.parametrize("key", ["seconds", "fit_seconds", "elapsed", "train-time", "date"])
def test_save_tensors_refuses_wall_clock_metadata(tmp_path: Path, key: str) -> None:
    import torch
    from prefgen.core.io import save_tensors

    path = tmp_path / "w.safetensors"
    with pytest.raises(ValueError, match=rf"w\.safetensors: .*key '{key}' is a wall-clock"):
        save_tensors({"a": torch.zeros(1)}, path, metadata={"step": "1", key: "12.5"})
    assert not path.exists()
