"""Images in and out of the user model: JPEG bytes from ``images.parquet`` to uint8 arrays.

Every user-model stage reads the same ``data/clean/images.parquet`` (``image_uid, jpg``); this
module decodes the rows a stage asks for, in the order it asks, and fails naming the uid that is
missing or undecodable instead of silently skipping it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def decode_jpeg(data: bytes, where: str = "image") -> np.ndarray:
    """One JPEG (or any PIL-readable) byte string -> uint8 ``[H,W,3]`` RGB."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # PIL raises several unrelated types for bad bytes
        raise ValueError(f"{where}: not a decodable image ({exc})") from exc


def load_images(images_parquet: str | Path, uids: Sequence[str]) -> np.ndarray:
    """Decode the images ``uids`` (in that order) into one uint8 array ``[N,H,W,3]``.

    All images of one world share a size; a mixed-size table is an error here because the
    callers batch them (generated images of other sizes go through the CLIP preprocess instead).
    """
    table = pd.read_parquet(images_parquet, columns=["image_uid", "jpg"])
    if table["image_uid"].duplicated().any():
        dup = table.loc[table["image_uid"].duplicated(), "image_uid"].iloc[0]
        raise ValueError(f"{images_parquet}: image_uid {dup!r} appears more than once")
    by_uid = pd.Series(np.arange(len(table)), index=table["image_uid"].astype(str))
    wanted = pd.Index([str(u) for u in uids])
    missing = wanted.difference(by_uid.index)
    if len(missing):
        raise ValueError(f"{images_parquet}: {len(missing)} requested image_uid(s) not present, "
                         f"e.g. {missing[0]!r}")
    rows = by_uid.loc[wanted].to_numpy()
    jpgs = table["jpg"].to_numpy()
    arrays = [decode_jpeg(jpgs[r], where=f"{images_parquet} image_uid {wanted[i]!r}")
              for i, r in enumerate(rows)]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"{images_parquet}: images have several sizes {sorted(shapes)}; "
                         "expected one size per world")
    if not arrays:
        return np.zeros((0, 1, 1, 3), dtype=np.uint8)
    return np.stack(arrays)
