"""LPP's inputs: the ``split_lpp`` tables, checked, and the images they name, decoded on demand.

``splits/lpp/references.parquet`` (``user_id, slot, image_uid, caption, liked``): every user's
N_ref liked and N_ref disliked reference images. ``episodes.parquet`` (``episode_id, user_id,
user_group, kind, caption, candidate_uids, candidate_captions, liked_index``): test episodes with
exactly one liked candidate. ``train_items.parquet`` (``user_id, image_uid, caption, liked``):
the seen users' other images, the training targets. A table that breaks these rules is an error
naming the file, row or user; nothing is dropped silently.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REFERENCE_COLUMNS = ["user_id", "slot", "image_uid", "caption", "liked"]
EPISODE_COLUMNS = [
    "episode_id",
    "user_id",
    "user_group",
    "kind",
    "caption",
    "candidate_uids",
    "candidate_captions",
    "liked_index",
]
TRAIN_COLUMNS = ["user_id", "image_uid", "caption", "liked"]
#: candidates per episode kind (LPP Tab. 1: 1 liked vs 1 disliked; Tab. 3: 1 liked vs 3)
KIND_SIZE = {"1v1": 2, "1v3": 4}
GROUPS = ("seen", "unseen")


def _read(path: str | Path, columns: list[str]) -> pd.DataFrame:
    df = pd.read_parquet(path)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {columns}")
    for col in columns:
        if df[col].isna().any():
            row = int(np.flatnonzero(df[col].isna().to_numpy())[0])
            raise ValueError(f"{path}: row {row}: column {col} is missing")
    return df


def read_references(path: str | Path, n_ref: int | None = None) -> pd.DataFrame:
    """References sorted by (user, slot, liked first); each user needs as many liked as disliked
    images (``n_ref`` each when given)."""
    df = _read(path, REFERENCE_COLUMNS)
    df = df.assign(
        user_id=df["user_id"].astype(np.int64),
        liked=df["liked"].astype(bool),
        image_uid=df["image_uid"].astype(str),
        caption=df["caption"].astype(str),
    )
    counts = df.groupby("user_id")["liked"].agg(["sum", "size"])
    bad = counts[
        (2 * counts["sum"] != counts["size"])
        | ((counts["sum"] != n_ref) if n_ref is not None else False)
    ]
    if len(bad):
        user = int(bad.index[0])
        raise ValueError(
            f"{path}: user_id {user} has {int(bad['sum'].iloc[0])} liked of "
            f"{int(bad['size'].iloc[0])} references; expected "
            f"{n_ref if n_ref is not None else 'as many'} liked and as many disliked"
        )
    return df.sort_values(
        ["user_id", "slot", "liked"], ascending=[True, True, False], ignore_index=True
    )


def read_episodes(path: str | Path) -> pd.DataFrame:
    """Episodes with one liked candidate each: ``liked_index`` inside the candidate list, the
    list as long as its kind says, no candidate twice, groups ``seen``/``unseen``."""
    df = _read(path, EPISODE_COLUMNS)
    for row in df.itertuples(index=False):
        where = f"{path}: episode_id {row.episode_id}"
        uids, caps = list(row.candidate_uids), list(row.candidate_captions)
        if row.kind not in KIND_SIZE:
            raise ValueError(f"{where}: kind {row.kind!r}, expected one of {sorted(KIND_SIZE)}")
        if len(uids) != KIND_SIZE[row.kind] or len(caps) != len(uids):
            raise ValueError(
                f"{where}: {len(uids)} candidate uids and {len(caps)} captions; "
                f"kind {row.kind} needs {KIND_SIZE[row.kind]} of each"
            )
        if len(set(uids)) != len(uids):
            raise ValueError(f"{where}: a candidate image appears twice")
        if not 0 <= int(row.liked_index) < len(uids):
            raise ValueError(
                f"{where}: liked_index {row.liked_index} is outside its "
                f"{len(uids)} candidates (exactly one liked target per episode)"
            )
        if row.user_group not in GROUPS:
            raise ValueError(f"{where}: user_group {row.user_group!r}, expected {GROUPS}")
    return df.assign(
        user_id=df["user_id"].astype(np.int64), liked_index=df["liked_index"].astype(np.int64)
    )


def read_train_items(path: str | Path) -> pd.DataFrame:
    df = _read(path, TRAIN_COLUMNS)
    return df.assign(
        user_id=df["user_id"].astype(np.int64),
        liked=df["liked"].astype(bool),
        image_uid=df["image_uid"].astype(str),
        caption=df["caption"].astype(str),
    )


def episode_items(episodes: pd.DataFrame) -> pd.DataFrame:
    """One row per (episode, candidate): ``episode_id, user_id, user_group, kind, position,
    image_uid, caption, liked``."""
    rows = []
    for row in episodes.itertuples(index=False):
        for pos, (uid, cap) in enumerate(
            zip(row.candidate_uids, row.candidate_captions, strict=True)
        ):
            rows.append(
                (
                    row.episode_id,
                    row.user_id,
                    row.user_group,
                    row.kind,
                    pos,
                    str(uid),
                    str(cap),
                    pos == row.liked_index,
                )
            )
    return pd.DataFrame(
        rows,
        columns=[
            "episode_id",
            "user_id",
            "user_group",
            "kind",
            "position",
            "image_uid",
            "caption",
            "liked",
        ],
    )


class ImageBank:
    """The JPEG bytes of the images a stage needs (read once, by uid), decoded when asked.

    Reads only the requested rows of ``images.parquet`` (a parquet filter), so it scales to the
    paper's image table; decoded images are kept, so a reference image seen every step is
    decoded once.
    """

    def __init__(self, images_parquet: str | Path, uids: Iterable[str]) -> None:
        wanted = sorted({str(u) for u in uids})
        table = pd.read_parquet(
            images_parquet,
            columns=["image_uid", "jpg"],
            filters=[("image_uid", "in", wanted)] if wanted else None,
        )
        table = table.drop_duplicates("image_uid")
        self.path = Path(images_parquet)
        self._bytes = dict(zip(table["image_uid"].astype(str), table["jpg"], strict=True))
        missing = sorted(set(wanted) - set(self._bytes))
        if missing:
            raise ValueError(
                f"{images_parquet}: {len(missing)} image_uid(s) named by the LPP "
                f"split are absent, e.g. {missing[0]!r}"
            )
        self._decoded: dict[str, Image.Image] = {}

    def __getitem__(self, uid: str) -> Image.Image:
        img = self._decoded.get(uid)
        if img is None:
            try:
                with Image.open(io.BytesIO(self._bytes[uid])) as raw:
                    img = raw.convert("RGB")
            except KeyError as exc:
                raise KeyError(f"{self.path}: image_uid {uid!r} was not loaded") from exc
            except Exception as exc:  # PIL raises several unrelated types for bad bytes
                raise ValueError(
                    f"{self.path}: image_uid {uid!r} is not decodable ({exc})"
                ) from exc
            self._decoded[uid] = img
        return img

    def many(self, uids: Iterable[str]) -> list[Image.Image]:
        return [self[str(u)] for u in uids]

    def array(self, uids: Iterable[str]) -> np.ndarray:
        """uint8 ``[N,H,W,3]`` (one size per world, as the oracle's pixel functions expect)."""
        arrays = [np.asarray(self[str(u)], dtype=np.uint8) for u in uids]
        if len({a.shape for a in arrays}) > 1:
            raise ValueError(f"{self.path}: images of several sizes; expected one per world")
        return np.stack(arrays) if arrays else np.zeros((0, 1, 1, 3), np.uint8)
