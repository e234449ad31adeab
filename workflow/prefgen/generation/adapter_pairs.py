"""Which preference pairs the adapters train on, and their rows in the encoded cache.

Every adapter method trains on the same pairs: the PIPE train split, minus

* users in ``splits/ppd/test_unseen.parquet`` (the global held-out users: no adapter method may
  see their preferences, docs/interfaces.md), and
* ties: a tie carries no preference, and the split gives train ties a *random* winner (right for
  the λ regression, noise for DPO); Diffusion-DPO (Wallace et al.) also trains on non-ties only.

Both ``encode`` (to know what to cache) and ``train_adapter`` call :func:`training_pairs`, so
the two can never disagree.
"""

from __future__ import annotations

import pandas as pd

SPLIT_COLUMNS = ("ranking_id", "user_id", "caption", "image_w_uid", "image_l_uid", "is_tie")


def training_pairs(
    pairs: pd.DataFrame,
    holdout: pd.DataFrame,
    pairs_path: str = "pairs",
    holdout_path: str = "holdout",
) -> pd.DataFrame:
    """Non-tie pairs of users not held out, sorted by ``ranking_id`` (a stable order)."""
    checks = ((pairs_path, pairs, SPLIT_COLUMNS), (holdout_path, holdout, ("user_id",)))
    for name, df, cols in checks:
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(
                f"{name}: missing column(s) {missing} (split table schema, docs/interfaces.md)"
            )
    held = set(holdout["user_id"].astype("int64"))
    keep = ~pairs["user_id"].isin(held) & ~pairs["is_tie"].astype(bool)
    out = pairs.loc[keep, list(SPLIT_COLUMNS)].sort_values("ranking_id", kind="stable")
    if out.empty:
        raise ValueError(
            f"{pairs_path}: no training pairs left after removing ties and the "
            f"{len(held)} held-out users of {holdout_path}"
        )
    return out.reset_index(drop=True)


def cache_rows(
    pairs: pd.DataFrame,
    image_index: pd.DataFrame,
    caption_index: pd.DataFrame,
    cache_path: str = "cache",
) -> pd.DataFrame:
    """Add ``w_row``, ``l_row`` (image rows) and ``c_row`` (caption row) of the encoded cache."""
    img = pd.Series(image_index["row"].to_numpy(), index=image_index["image_uid"])
    cap = pd.Series(caption_index["row"].to_numpy(), index=caption_index["caption"])
    out = pairs.copy()
    out["w_row"] = out["image_w_uid"].map(img)
    out["l_row"] = out["image_l_uid"].map(img)
    out["c_row"] = out["caption"].map(cap)
    bad = out[["w_row", "l_row", "c_row"]].isna().any(axis=1)
    if bad.any():
        first = out.loc[bad].iloc[0]
        raise ValueError(
            f"{cache_path}: {int(bad.sum())} training pairs have no cached latent or "
            f"text state (e.g. ranking_id {first['ranking_id']}); rerun `encode`"
        )
    return out.astype({"w_row": "int64", "l_row": "int64", "c_row": "int64"})
