"""Images in and out of the generator: JPEG bytes -> VAE input, and decoded samples -> PNG.

The generator needs every image at the model's own resolution (32 px for the mini stand-in,
1024 px for SDXL), so unlike the user model's reader this one resizes (bicubic); a uid that is
missing or undecodable is an error naming it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image


def load_images(images_parquet: str | Path, uids: Sequence[str], size: int) -> np.ndarray:
    """uint8 ``[N, size, size, 3]`` for ``uids`` (in that order) from ``images.parquet``."""
    table = pd.read_parquet(images_parquet, columns=["image_uid", "jpg"])
    jpg = pd.Series(table["jpg"].to_numpy(), index=table["image_uid"].astype(str))
    if jpg.index.duplicated().any():
        dup = jpg.index[jpg.index.duplicated()][0]
        raise ValueError(f"{images_parquet}: duplicate image_uid {dup!r}")
    missing = pd.Index([str(u) for u in uids]).difference(jpg.index)
    if len(missing):
        raise ValueError(f"{images_parquet}: {len(missing)} image_uid(s) not present, "
                         f"e.g. {missing[0]!r}")
    out = np.empty((len(uids), size, size, 3), dtype=np.uint8)
    for i, uid in enumerate(uids):
        try:
            with Image.open(io.BytesIO(jpg[str(uid)])) as img:
                img = img.convert("RGB")
                if img.size != (size, size):
                    img = img.resize((size, size), Image.Resampling.BICUBIC)
                out[i] = np.asarray(img)
        except OSError as exc:
            raise ValueError(f"{images_parquet}: image_uid {uid!r} is not decodable "
                             f"({exc})") from exc
    return out


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N,H,W,3]`` -> float ``[N,3,H,W]`` in [-1, 1] (the VAE's input range)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x.div(127.5).sub(1.0)
