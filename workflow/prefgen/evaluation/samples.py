"""Reading what the ``sample`` rule wrote: the index of generated images and the PNGs themselves.

The index (``samples/{method}/seed{train_seed}/index.parquet``, ``samples/base/index.parquet``)
is checked before anything is scored, so a malformed upstream file fails here with the file,
column and row named, instead of producing a table with silently missing comparisons.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from prefgen.evaluation.win_rates import INDEX_COLUMNS, PAIR_KEYS

INTEGER_COLUMNS = ["train_seed", "step", "user_id", "prompt_id", "seed"]


def resolve_image(run_dir: str | Path, path: str) -> Path:
    """An index ``path`` is relative to the run directory (``results/<run_name>/``); absolute
    paths and paths relative to the working directory (starting with the run directory) are
    accepted too. Error if the file does not exist."""
    p = Path(path)
    candidates = [p] if p.is_absolute() else [Path(run_dir) / p, p]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"sample image '{path}' not found (looked at {', '.join(str(c) for c in candidates)})"
    )


def read_index(path: str | Path, run_dir: str | Path) -> pd.DataFrame:
    """The samples index, validated: contract columns, integer ids, one method, unique
    (step, user, prompt, seed), user_group in seen/unseen, every image present."""
    path = Path(path)
    df = pd.read_parquet(path)
    missing = [c for c in INDEX_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {INDEX_COLUMNS}")
    df = df[INDEX_COLUMNS].copy()
    for col in INDEX_COLUMNS:
        null = df[col].isna()
        if null.any():
            row = int(np.flatnonzero(null)[0])
            raise ValueError(f"{path}: column '{col}' is empty at row {row}")
    for col in INTEGER_COLUMNS:
        if not pd.api.types.is_integer_dtype(df[col]):
            raise ValueError(f"{path}: column '{col}' must be integer, got {df[col].dtype}")
        df[col] = df[col].astype(np.int64)
    methods = df["method"].unique()
    if len(methods) != 1:
        raise ValueError(f"{path}: expected one method per index, found {sorted(methods)}")
    train_seeds = df["train_seed"].unique()
    if len(train_seeds) != 1:
        raise ValueError(
            f"{path}: expected one training seed per index, found "
            f"{sorted(int(s) for s in train_seeds)}"
        )
    bad_group = ~df["user_group"].isin(["seen", "unseen"])
    if bad_group.any():
        row = int(np.flatnonzero(bad_group)[0])
        raise ValueError(
            f"{path}: row {row}: user_group '{df['user_group'].iloc[row]}' is not "
            "'seen' or 'unseen'"
        )
    dup = df.duplicated(["step", *PAIR_KEYS])
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise ValueError(
            f"{path}: row {row}: duplicate (step, user_id, prompt_id, seed) "
            f"{df.loc[df.index[row], ['step', *PAIR_KEYS]].to_dict()}"
        )
    for i, p in enumerate(df["path"]):
        try:
            resolve_image(run_dir, p)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{path}: row {i}: {exc}") from None
    return df.reset_index(drop=True)


def load_images(run_dir: str | Path, paths: Sequence[str]) -> list[Image.Image]:
    """RGB PIL images, fully read (files are closed before returning)."""
    out = []
    for p in paths:
        with Image.open(resolve_image(run_dir, p)) as im:
            out.append(im.convert("RGB"))
    return out
