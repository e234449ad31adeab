"""Preference pairs as index tensors over cached features: what every user-model stage consumes.

A split table (``ranking_id, user_id, caption, image_w_uid, image_l_uid, is_tie``) becomes
*items* (distinct (image, caption) combinations, each scored once per forward pass) and *pairs*
(winner item, loser item, user index). Scoring items rather than pair sides halves the work and
lets a session's recurring image share one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from prefgen.user_model.features import FeatureStore

SPLIT_COLUMNS = ("user_id", "caption", "image_w_uid", "image_l_uid", "is_tie")


@dataclass
class PairSet:
    """Pairs of one split, indexed into items and users."""

    item_img: np.ndarray  # [I] image row in the feature store
    item_cap: np.ndarray  # [I] caption row in the feature store
    item_uid: np.ndarray  # [I] image uid (for decoding pixels, e.g. for the oracle)
    item_caption: np.ndarray  # [I] caption text
    win: np.ndarray  # [P] item index of the preferred image
    lose: np.ndarray  # [P] item index of the other image
    user: np.ndarray  # [P] user index into user_ids
    user_ids: np.ndarray  # [U] int64, sorted
    is_tie: np.ndarray  # [P] bool (in train: the label was randomised by the split)
    source: str = "pairs"

    @property
    def n_pairs(self) -> int:
        return len(self.win)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def pairs_per_user(self) -> np.ndarray:
        return np.bincount(self.user, minlength=self.n_users)

    def item_features(self, store: FeatureStore) -> tuple[torch.Tensor, torch.Tensor]:
        """``(img [I,D], txt [I,D])`` frozen embeddings of the items."""
        return store.image_emb[torch.from_numpy(self.item_img)], store.caption_emb[
            torch.from_numpy(self.item_cap)
        ]

    def subset(self, mask: np.ndarray) -> PairSet:
        """The pairs where ``mask`` holds (items and users kept as they are)."""
        return PairSet(
            self.item_img,
            self.item_cap,
            self.item_uid,
            self.item_caption,
            self.win[mask],
            self.lose[mask],
            self.user[mask],
            self.user_ids,
            self.is_tie[mask],
            self.source,
        )


def read_split(path: str | Path) -> pd.DataFrame:
    """Read a split table, checking the columns the user model needs (error names the file)."""
    df = pd.read_parquet(path)
    missing = [c for c in SPLIT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; expected a split table with "
            f"{list(SPLIT_COLUMNS)}"
        )
    for col in SPLIT_COLUMNS:
        if df[col].isna().any():
            row = int(np.flatnonzero(df[col].isna().to_numpy())[0])
            raise ValueError(f"{path}: row {row}: column {col} is missing")
    return df


def build_pairs(
    df: pd.DataFrame, store: FeatureStore, source: str = "pairs", user_ids: np.ndarray | None = None
) -> PairSet:
    """Index a split table into a :class:`PairSet` over ``store``'s rows.

    ``user_ids`` fixes the user index (e.g. the users λ was fitted for); a user of ``df`` not
    in it is an error naming the user.
    """
    uid_w = df["image_w_uid"].astype(str).to_numpy()
    uid_l = df["image_l_uid"].astype(str).to_numpy()
    caps = df["caption"].astype(str).to_numpy()
    keys = pd.DataFrame(
        {"uid": np.concatenate([uid_w, uid_l]), "cap": np.concatenate([caps, caps])}
    )
    codes, uniques = pd.factorize(pd.MultiIndex.from_frame(keys), sort=True)
    items = pd.DataFrame({"uid": uniques.get_level_values(0), "cap": uniques.get_level_values(1)})
    n = len(df)
    users = df["user_id"].to_numpy(dtype=np.int64)
    if user_ids is None:
        user_ids = np.unique(users)
    user_ids = np.asarray(user_ids, dtype=np.int64)
    pos = np.searchsorted(user_ids, users)
    pos_c = np.clip(pos, 0, max(len(user_ids) - 1, 0))
    bad = (pos >= len(user_ids)) | (user_ids[pos_c] != users) if len(user_ids) else np.ones(n, bool)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise KeyError(f"{source}: row {row}: user_id {users[row]} is not among the fitted users")
    return PairSet(
        item_img=store.image_rows(items["uid"].to_numpy(), where=source),
        item_cap=store.caption_rows(items["cap"].to_numpy(), where=source),
        item_uid=items["uid"].to_numpy().astype(str),
        item_caption=items["cap"].to_numpy().astype(str),
        win=codes[:n].astype(np.int64),
        lose=codes[n:].astype(np.int64),
        user=pos.astype(np.int64),
        user_ids=user_ids,
        is_tie=df["is_tie"].to_numpy(dtype=bool),
        source=source,
    )
