"""Images in and out of the generator: JPEG bytes -> VAE input, and decoded samples -> PNG.

The generator needs every image at the model's own resolution (32 px for the mini stand-in,
1024 px for SDXL), so unlike the user model's reader this one resizes (bicubic); a uid that is
missing or undecodable is an error naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from prefgen.user_model.imageio import read_jpegs


def load_images(images_parquet: str | Path, uids: Sequence[str], size: int) -> np.ndarray:
    """uint8 ``[N, size, size, 3]`` for ``uids`` (in that order) from ``images.parquet``."""
    out = np.empty((len(uids), size, size, 3), dtype=np.uint8)
    for i, pixels in enumerate(read_jpegs(images_parquet, uids)):
        if pixels.shape[:2] != (size, size):
            pixels = np.asarray(
                Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC)
            )
        out[i] = pixels
    return out


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N,H,W,3]`` -> float ``[N,3,H,W]`` in [-1, 1] (the VAE's input range)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x.div(127.5).sub(1.0)
