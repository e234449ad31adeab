"""Procedural scene renderer of the synthetic world (a stand-in for a text-to-image model's output).

One object (a shape in a colour) on a background, drawn for a whole batch at once with numpy:
signed distance functions give anti-aliased edges at any size, then per-image photographic knobs
(saturation, warmth, contrast, brightness, blur, background colour gradient, sensor noise) make
images of the same prompt differ in the attributes users care about. Rendering is a pure function
of the parameters and a seed, so the same world seed gives the same pixels and the same JPEG bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")


@dataclass
class SceneParams:
    """Per-image rendering parameters; every array has length N (colours are ``[N,3]`` in [0,1])."""

    shape: np.ndarray  # int index into SHAPES
    colour: np.ndarray  # object colour
    background: np.ndarray  # background colour
    gradient_colour: np.ndarray  # second background colour (colourfulness)
    gradient_amount: np.ndarray  # 0 = flat background, 1 = full gradient to gradient_colour
    gradient_angle: np.ndarray  # radians
    scale: np.ndarray  # object radius as a fraction of the half-width
    cx: np.ndarray  # object centre in [-1, 1]
    cy: np.ndarray
    rotation: np.ndarray  # radians
    saturation: np.ndarray  # multiplicative around luma (1 = unchanged)
    warmth: np.ndarray  # added to R, subtracted from B
    contrast: np.ndarray  # multiplicative around the image's mean luma
    gamma: np.ndarray  # brightness: x ** gamma (< 1 brighter)
    blur: np.ndarray  # 0 = sharp, 1 = fully blurred

    def __len__(self) -> int:
        return len(self.shape)

    def take(self, idx: np.ndarray | slice) -> SceneParams:
        return SceneParams(**{k: v[idx] for k, v in self.__dict__.items()})


def _box(px: np.ndarray, py: np.ndarray, hx: float, hy: float) -> np.ndarray:
    qx, qy = np.abs(px) - hx, np.abs(py) - hy
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _triangle(px: np.ndarray, py: np.ndarray, r: float = 1.0) -> np.ndarray:
    k = np.sqrt(3.0)
    px = np.abs(px) - r
    py = py + r / k
    flip = px + k * py > 0
    nx = np.where(flip, (px - k * py) / 2, px)
    ny = np.where(flip, (-k * px - py) / 2, py)
    nx = nx - np.clip(nx, -2 * r, 0)
    return -np.sqrt(nx**2 + ny**2) * np.sign(ny)


def shape_sdf(shape: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Signed distance (in object units, negative inside) of each image's shape; ``[N,H,W]``."""
    out = np.empty_like(px)
    for idx, name in enumerate(SHAPES):
        sel = shape == idx
        if not sel.any():
            continue
        x, y = px[sel], py[sel]
        if name == "circle":
            d = np.sqrt(x**2 + y**2) - 0.95
        elif name == "square":
            d = _box(x, y, 0.8, 0.8)
        elif name == "triangle":
            d = _triangle(x, y + 0.15, 1.05)
        elif name == "star":
            rho, phi = np.sqrt(x**2 + y**2), np.arctan2(y, x)
            d = 0.6 * (rho - (0.72 + 0.32 * np.cos(5 * phi)))
        elif name == "diamond":
            d = (np.abs(x) + np.abs(y) - 1.1) / np.sqrt(2.0)
        else:  # cross
            d = np.minimum(_box(x, y, 1.0, 0.32), _box(x, y, 0.32, 1.0))
        out[sel] = d
    return out


def grade(colours: np.ndarray, params: SceneParams) -> np.ndarray:
    """Apply each image's saturation, warmth and brightness (gamma) to its ``[N,3]`` colours.

    These are per-pixel colour maps, so they are applied to the scene's few colours (object,
    background, gradient) before compositing instead of to every pixel afterwards: the same
    look at a fraction of the cost (they differ only inside anti-aliased edges and gradients).
    """
    y = np.array([0.299, 0.587, 0.114])
    luma = (colours @ y)[:, None]
    c = luma + params.saturation[:, None] * (colours - luma)
    c = c + np.stack([params.warmth, np.zeros_like(params.warmth), -params.warmth], axis=1)
    return np.clip(c, 0.0, 1.0) ** params.gamma[:, None]


def render(
    params: SceneParams, size: int, rng: np.random.Generator, noise_std: float = 0.015
) -> np.ndarray:
    """Render a batch of scenes to uint8 ``[N, size, size, 3]``."""
    n = len(params)
    f32 = np.float32
    coords = ((np.arange(size) + 0.5) / size * 2.0 - 1.0).astype(f32)
    v, u = np.meshgrid(coords, coords, indexing="ij")  # v: rows (down), u: columns
    u, v = u[None], v[None]

    def col(a: np.ndarray) -> np.ndarray:  # broadcast a per-image value over pixels
        return np.asarray(a, dtype=f32)[:, None, None]

    def pix(a: np.ndarray) -> np.ndarray:  # per-image colour, channels first: [N,3,1,1]
        return np.asarray(a, dtype=f32)[:, :, None, None]

    du, dv = u - col(params.cx), v - col(params.cy)
    cos, sin = np.cos(col(params.rotation)), np.sin(col(params.rotation))
    scale = col(params.scale)
    px = (cos * du + sin * dv) / scale
    py = (-sin * du + cos * dv) / scale
    sdf = shape_sdf(params.shape, px, py) * scale  # back to image units
    alpha = np.clip(0.5 - sdf / (2.0 / size), 0.0, 1.0)

    t = (np.cos(col(params.gradient_angle)) * u + np.sin(col(params.gradient_angle)) * v + 1.0) / 2
    t *= col(params.gradient_amount)
    bg, grad, obj = (
        pix(grade(c, params)) for c in (params.background, params.gradient_colour, params.colour)
    )
    shade = 1.0 - 0.12 * py.clip(-1, 1)  # a little light from above
    # channels first ([N,3,H,W]) while computing: numpy broadcasts fast over a long last axis
    w_obj = (alpha * shade)[:, None]
    w_grad = ((1 - alpha) * t)[:, None]
    w_bg = ((1 - alpha) * (1 - t))[:, None]
    x = bg * w_bg
    x += grad * w_grad
    x += obj * w_obj

    mean_luma = np.einsum(
        "nc,c->n", x.mean(axis=(2, 3), dtype=f32), np.array([0.299, 0.587, 0.114], dtype=f32)
    )[:, None, None, None]
    contrast = col(params.contrast)[:, None]
    x *= contrast
    x += (1 - contrast) * mean_luma
    np.clip(x, 0.0, 1.0, out=x)
    blurred = gaussian_filter(
        x, sigma=(0, 0, 1.1 * size / 32, 1.1 * size / 32), mode="nearest", truncate=2.5
    )
    blurred -= x
    blurred *= col(params.blur)[:, None]
    x += blurred
    # sensor noise (luminance only): uniform with the given std, cheaper than Gaussian
    x += (
        (rng.random(size=(n, size, size), dtype=f32) - f32(0.5)) * f32(noise_std * np.sqrt(12.0))
    )[:, None]
    x *= 255.0
    np.rint(x, out=x)
    np.clip(x, 0, 255, out=x)
    return np.ascontiguousarray(x.astype(np.uint8).transpose(0, 2, 3, 1))


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of one ``[H,W,3]`` uint8 image (4:4:4 chroma: tiny images keep their colours)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def jpeg_roundtrip(pixels: np.ndarray, quality: int) -> np.ndarray:
    """The pixels ``decode(encode_jpeg(p))`` of every image in ``[N,S,S,3]``, in one JPEG call.

    Baseline JPEG with 4:4:4 chroma codes every 8x8 block on its own, so a mosaic of images
    whose side is a multiple of 8 decodes to exactly the pixels each image decodes to alone
    (tested in tests/test_world.py); one big call replaces N small ones.
    """
    n, s = pixels.shape[0], pixels.shape[1]
    if s % 8:
        return np.stack([decode_jpeg(encode_jpeg(p, quality)) for p in pixels])
    cols = max(1, min(n, 60000 // s))
    rows = -(-n // cols)
    padded = np.zeros((rows * cols, s, s, 3), np.uint8)
    padded[:n] = pixels
    mosaic = (
        padded.reshape(rows, cols, s, s, 3).transpose(0, 2, 1, 3, 4).reshape(rows * s, cols * s, 3)
    )
    out = decode_jpeg(encode_jpeg(mosaic, quality))
    return out.reshape(rows, s, cols, s, 3).transpose(0, 2, 1, 3, 4).reshape(-1, s, s, 3)[:n]


def decode_jpeg(data: bytes) -> np.ndarray:
    """``[H,W,3]`` uint8 pixels of JPEG (or any PIL-readable) bytes."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))
