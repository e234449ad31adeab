"""The shared image reader: batched libjpeg decoding must give PIL's pixels, and bad rows must
still be named (the batched path cannot say which row failed, so it falls back to PIL)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from prefgen.generation.images import load_images as load_resized
from prefgen.user_model.imageio import decode_images, decode_jpeg, load_images


def _encode(pixels: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, quality=90)
    return buf.getvalue()


@pytest.fixture()
def images_parquet(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "images.parquet"
    pd.DataFrame(
        {"image_uid": [f"u{i}" for i in range(6)], "jpg": [_encode(p) for p in pixels]}
    ).to_parquet(path)
    return path


def test_batched_decode_equals_pil(images_parquet) -> None:
    table = pd.read_parquet(images_parquet)
    expected = np.stack([decode_jpeg(b) for b in table["jpg"]])
    got = load_images(images_parquet, table["image_uid"].tolist())
    np.testing.assert_array_equal(got, expected)
    # order follows the request, not the file
    np.testing.assert_array_equal(load_images(images_parquet, ["u3", "u0"]), expected[[3, 0]])


def test_png_and_greyscale_rows_decode_to_rgb() -> None:
    grey = _encode(np.full((8, 8), 200, np.uint8))
    png = _encode(np.zeros((8, 8, 3), np.uint8), "PNG")
    out = decode_images([grey, png], ["grey", "png"])
    assert [a.shape for a in out] == [(8, 8, 3), (8, 8, 3)]
    assert out[0].dtype == np.uint8 and abs(int(out[0].mean()) - 200) <= 2


def test_corrupt_row_is_named(images_parquet, tmp_path) -> None:
    table = pd.read_parquet(images_parquet)
    table.loc[2, "jpg"] = table.loc[2, "jpg"][:40]  # truncated JPEG
    bad = tmp_path / "bad.parquet"
    table.to_parquet(bad)
    with pytest.raises(ValueError, match=r"image_uid 'u2'.*not a decodable image"):
        load_images(bad, table["image_uid"].tolist())
    with pytest.raises(ValueError, match=r"image_uid 'u2'"):
        load_resized(bad, ["u2"], 16)


def test_generator_reader_resizes(images_parquet) -> None:
    out = load_resized(images_parquet, ["u1", "u4"], 32)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
    same = load_resized(images_parquet, ["u1"], 16)
    np.testing.assert_array_equal(same[0], load_images(images_parquet, ["u1"])[0])
