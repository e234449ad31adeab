"""JPEG bytes from ``images.parquet`` to uint8 arrays, for every stage that reads images.

The user model, the foundation and the encoder all read the same ``data/clean/images.parquet``
(``image_uid, jpg``); this module decodes the rows a stage asks for, in the order it asks, and
fails naming the uid that is missing or undecodable instead of silently skipping it.

Decoding is batched through torchvision's libjpeg decoder: for the mini world's ~50K small JPEGs
that is ~4x faster than one PIL call per image (pixel-identical: both use libjpeg), and each
image-reading stage paid ~10 s for it. Anything torchvision refuses (a corrupt row, a PNG) falls
back to PIL per image, which decodes what it can and names the row it cannot.
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


def decode_images(blobs: Sequence[bytes], names: Sequence[str]) -> list[np.ndarray]:
    """uint8 ``[H,W,3]`` RGB arrays for ``blobs``; ``names[i]`` says where blob i came from."""
    import torch
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as decode_jpeg_batch

    if not len(blobs):
        return []
    try:
        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        return [
            t.permute(1, 2, 0).numpy() for t in decode_jpeg_batch(tensors, mode=ImageReadMode.RGB)
        ]
    except (RuntimeError, ValueError):  # not all JPEG, or one is corrupt: PIL names which
        return [decode_jpeg(b, where=n) for b, n in zip(blobs, names, strict=True)]


def read_jpegs(images_parquet: str | Path, uids: Sequence[str]) -> list[np.ndarray]:
    """The decoded images ``uids``, in that order (sizes as stored)."""
    table = pd.read_parquet(images_parquet, columns=["image_uid", "jpg"])
    if table["image_uid"].duplicated().any():
        dup = table.loc[table["image_uid"].duplicated(), "image_uid"].iloc[0]
        raise ValueError(f"{images_parquet}: image_uid {dup!r} appears more than once")
    by_uid = pd.Series(np.arange(len(table)), index=table["image_uid"].astype(str))
    wanted = pd.Index([str(u) for u in uids])
    missing = wanted.difference(by_uid.index)
    if len(missing):
        raise ValueError(
            f"{images_parquet}: {len(missing)} requested image_uid(s) not present, "
            f"e.g. {missing[0]!r}"
        )
    jpgs = table["jpg"].to_numpy()
    rows = by_uid.loc[wanted].to_numpy()
    return decode_images(
        [jpgs[r] for r in rows], [f"{images_parquet} image_uid {u!r}" for u in wanted]
    )


def load_images(images_parquet: str | Path, uids: Sequence[str]) -> np.ndarray:
    """Decode the images ``uids`` (in that order) into one uint8 array ``[N,H,W,3]``.

    All images of one world share a size; a mixed-size table is an error here because the
    callers batch them (generated images of other sizes go through the CLIP preprocess instead).
    """
    arrays = read_jpegs(images_parquet, uids)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(
            f"{images_parquet}: images have several sizes {sorted(shapes)}; "
            "expected one size per world"
        )
    if not arrays:
        return np.zeros((0, 1, 1, 3), dtype=np.uint8)
    return np.stack(arrays)
