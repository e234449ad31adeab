"""Pixel functions of the synthetic world: eight image attributes measured on *any* RGB image.

The planted user types (``prefgen.data.world``) are linear rewards over these attributes, so the
oracle can judge generated images exactly as it judged the world's own images: nothing here uses
the renderer's latent knobs, only pixels and the caption. Images are resized to
``MEASURE_SIZE`` first, so a 16x16 smoke image, a 32x32 mini image and a 1024x1024 SDXL sample
are measured the same way.

Caption fidelity is measured, not looked up: the object is segmented from the background (pixels
far from the border's median colour), its mean colour's hue is compared with the hue of the
colour word the caption names. A wrong-colour object, or a grey one, scores low.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from PIL import Image

#: Attributes in the order of the type weight vectors (``world.json`` repeats it).
ATTRIBUTES: tuple[str, ...] = (
    "brightness",
    "saturation",
    "warmth",
    "contrast",
    "sharpness",
    "colourfulness",
    "object_size",
    "caption_fidelity",
)

#: Every image is measured at this size (pixels per side).
MEASURE_SIZE = 32

#: Object colours a caption can name, as sRGB (0-255). Hues are >= 30 degrees apart.
OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "yellow": (230, 205, 40),
    "green": (50, 165, 60),
    "teal": (35, 170, 175),
    "blue": (45, 85, 215),
    "purple": (140, 60, 200),
    "pink": (235, 95, 170),
}

#: Background names a caption can use (the renderer paints these), as sRGB.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (232, 232, 228),
    "black": (22, 22, 24),
    "grey": (128, 128, 128),
    "dark blue": (22, 32, 92),
    "light blue": (165, 198, 232),
    "dark green": (22, 70, 36),
    "beige": (224, 208, 170),
    "brown": (105, 68, 40),
}

#: Width (degrees) of the hue tolerance in caption fidelity: exp(-(dh / width)^2).
FIDELITY_HUE_WIDTH = 15.0
#: Object saturation at which fidelity is no longer discounted (a grey object is no colour).
FIDELITY_FULL_SATURATION = 0.25

_COLOUR_RE = re.compile(r"\b(" + "|".join(OBJECT_COLOURS) + r")\b")


def caption_colour(caption: str) -> str | None:
    """The object colour a caption names: the first palette word before " on " (or anywhere).

    Background names ("dark blue background") come after " on ", so they are not mistaken for
    the object's colour. Returns None when the caption names no palette colour.
    """
    head = caption.lower().split(" on ", 1)[0]
    match = _COLOUR_RE.search(head)
    return match.group(1) if match else None


def _rgb_to_hue_deg(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees [0, 360) of float RGB in [0, 1], last axis = channels."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    d = np.where(mx - mn > 1e-8, mx - mn, 1.0)
    h = np.where(
        mx == r, ((g - b) / d) % 6.0, np.where(mx == g, (b - r) / d + 2.0, (r - g) / d + 4.0)
    )
    return (h * 60.0) % 360.0


PALETTE_HUES: dict[str, float] = {
    name: float(_rgb_to_hue_deg(np.asarray(rgb, dtype=np.float64) / 255.0))
    for name, rgb in OBJECT_COLOURS.items()
}


def to_float_batch(
    images: np.ndarray | Sequence[Image.Image] | Sequence[np.ndarray], size: int = MEASURE_SIZE
) -> np.ndarray:
    """Any batch of RGB images -> float32 ``[N, size, size, 3]`` in [0, 1].

    Accepts a uint8 array ``[N,H,W,3]``, a float array in [0, 1] (channels last or first), or a
    list of PIL images / arrays of any sizes. Square images whose side divides or is a multiple
    of ``size`` are resampled with numpy (block mean / pixel repeat, which is what a box filter
    does at integer ratios); any other size goes through PIL's box filter one by one.
    """
    if isinstance(images, np.ndarray):
        arr = images
        if arr.ndim != 4:
            raise ValueError(f"images: expected a 4-d array [N,H,W,3], got shape {arr.shape}")
        if arr.shape[-1] != 3 and arr.shape[1] == 3:
            arr = np.transpose(arr, (0, 2, 3, 1))
        if arr.shape[-1] != 3:
            raise ValueError(f"images: expected 3 colour channels, got shape {arr.shape}")
        arr = _as_uint8(arr, None)
    else:
        items = [
            np.asarray(im.convert("RGB")) if isinstance(im, Image.Image) else _as_uint8(im, i)
            for i, im in enumerate(images)
        ]
        if not items:
            return np.zeros((0, size, size, 3), dtype=np.float32)
        if len({it.shape for it in items}) == 1:
            arr = np.stack(items)
        else:
            return np.stack([to_float_batch(it[None], size)[0] for it in items])
    n, h, w, _ = arr.shape
    if h == w == size:
        return arr.astype(np.float32) / 255.0
    if h == w and h % size == 0:
        f = h // size
        return arr.reshape(n, size, f, size, f, 3).mean((2, 4), dtype=np.float32) / 255.0
    if h == w and size % h == 0:
        f = size // h
        return np.repeat(np.repeat(arr, f, 1), f, 2).astype(np.float32) / 255.0
    out = np.empty((n, size, size, 3), dtype=np.float32)
    for i in range(n):
        img = Image.fromarray(arr[i]).resize((size, size), Image.Resampling.BOX)
        out[i] = np.asarray(img, dtype=np.float32) / 255.0
    return out


def _as_uint8(arr: np.ndarray, index: int | None) -> np.ndarray:
    """uint8 pixels; float input is read as [0, 1] (values outside are clipped)."""
    arr = np.asarray(arr)
    if index is not None and arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = np.transpose(arr, (1, 2, 0))  # one channels-first image (a torch tensor, say)
    if index is not None and (arr.ndim != 3 or arr.shape[-1] != 3):
        raise ValueError(f"images[{index}]: expected an [H,W,3] RGB array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return arr


def object_mask(x: np.ndarray) -> np.ndarray:
    """Boolean ``[N,H,W]`` object mask: pixels far from the median colour of the border.

    The threshold adapts to each image (half its 98th-percentile distance, at least 0.1), so
    it works for dark, bright, low- and high-contrast images alike.
    """
    border = np.concatenate([x[:, 0], x[:, -1], x[:, 1:-1, 0], x[:, 1:-1, -1]], axis=1)
    bg = np.median(border, axis=1)  # [N,3]
    dist = _colour_distance(x, bg)
    thr = np.maximum(0.5 * _upper_quantile(dist.reshape(len(x), -1), 0.98), 0.1)
    return dist > thr[:, None, None]


def _colour_distance(x: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Euclidean RGB distance ``[N,H,W]`` of each pixel to a per-image colour ``[N,3]``.

    Written out per channel: numpy reductions over a length-3 last axis are slow.
    """
    d = [x[..., c] - colour[:, c, None, None] for c in range(3)]
    return np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)


def _upper_quantile(v: np.ndarray, q: float) -> np.ndarray:
    """Per-row order statistic at ``q`` (partition, not a full sort: this runs on every image)."""
    k = min(v.shape[1] - 1, int(np.floor(q * (v.shape[1] - 1))))
    return np.partition(v, k, axis=1)[:, k]


def measure_attributes(
    images: np.ndarray | Sequence[Image.Image] | Sequence[np.ndarray], captions: Sequence[str]
) -> pd.DataFrame:
    """Measure the eight attributes (``ATTRIBUTES``) of each image; one row per image.

    ``caption_fidelity`` is NaN when a caption names no palette colour (the reward functions
    treat it as average). Everything else is defined for any image.
    """
    x = to_float_batch(images)
    n = len(x)
    if len(captions) != n:
        raise ValueError(f"measure_attributes: {n} images but {len(captions)} captions")
    if n == 0:
        return pd.DataFrame({a: np.zeros(0) for a in ATTRIBUTES})
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    flat_luma = luma.reshape(n, -1)
    brightness = flat_luma.mean(1)
    contrast = flat_luma.std(1)
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    saturation = ((mx - mn) / np.maximum(mx, 1e-3)).reshape(n, -1).mean(1)
    warmth = (r - b).reshape(n, -1).mean(1)
    lap = (
        4.0 * luma[:, 1:-1, 1:-1]
        - luma[:, :-2, 1:-1]
        - luma[:, 2:, 1:-1]
        - luma[:, 1:-1, :-2]
        - luma[:, 1:-1, 2:]
    )
    sharpness = np.abs(lap).reshape(n, -1).mean(1) / (contrast + 0.02)
    rg = (r - g).reshape(n, -1)
    yb = (0.5 * (r + g) - b).reshape(n, -1)
    colourfulness = np.sqrt(rg.std(1) ** 2 + yb.std(1) ** 2) + 0.3 * np.sqrt(
        rg.mean(1) ** 2 + yb.mean(1) ** 2
    )
    mask = object_mask(x)
    object_size = mask.reshape(n, -1).mean(1)
    fidelity = _caption_fidelity(x, mask, captions)
    return pd.DataFrame(
        {
            "brightness": brightness,
            "saturation": saturation,
            "warmth": warmth,
            "contrast": contrast,
            "sharpness": sharpness,
            "colourfulness": colourfulness,
            "object_size": object_size,
            "caption_fidelity": fidelity,
        }
    ).astype(np.float64)


def _caption_fidelity(x: np.ndarray, mask: np.ndarray, captions: Sequence[str]) -> np.ndarray:
    """Hue agreement between the object's mean colour and the caption's colour word, in [0, 1]."""
    n = len(x)
    weights = mask.astype(np.float32)
    empty = weights.reshape(n, -1).sum(1) == 0
    if empty.any():  # no pixel passed the threshold: use the 5% farthest from the border colour
        border = np.concatenate([x[empty, 0], x[empty, -1]], axis=1)
        dist = _colour_distance(x[empty], np.median(border, 1))
        cut = _upper_quantile(dist.reshape(len(dist), -1), 0.95)
        weights[empty] = (dist >= cut[:, None, None]).astype(np.float32)
    w = weights[..., None]
    mean_rgb = (x * w).sum((1, 2)) / np.maximum(w.sum((1, 2)), 1.0)
    hue = _rgb_to_hue_deg(mean_rgb)
    mx, mn = mean_rgb.max(-1), mean_rgb.min(-1)
    sat = (mx - mn) / np.maximum(mx, 1e-3)
    out = np.full(n, np.nan)
    for i, caption in enumerate(captions):
        colour = caption_colour(caption)
        if colour is None:
            continue
        dh = abs(hue[i] - PALETTE_HUES[colour])
        dh = min(dh, 360.0 - dh)
        out[i] = np.exp(-((dh / FIDELITY_HUE_WIDTH) ** 2)) * min(
            1.0, sat[i] / FIDELITY_FULL_SATURATION
        )
    return out
