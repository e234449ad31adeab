"""The synthetic world: determinism, the Pick-a-Pic v2 contract, the pixel functions, the oracle."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFilter
from prefgen.core.seeding import rng
from prefgen.data.attributes import ATTRIBUTES, measure_attributes
from prefgen.data.pickapic_schema import PICKAPIC_V2_SCHEMA
from prefgen.data.render import decode_jpeg, encode_jpeg, jpeg_roundtrip
from prefgen.data.truth import load_truth, oracle_reward, type_rewards
from prefgen.data.world import allocate_pairs

from tests.data_world import make_world, smoke_config, world_params

#: A world small enough to build twice in a few seconds, still with every feature.
TINY = {"n_users": 40, "n_pairs": 900, "n_prompts": 120, "rows_per_shard": 400}


@pytest.fixture(scope="module")
def smoke_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_world(tmp_path_factory.mktemp("world"), world_params())


def read_all(shards: Path) -> pd.DataFrame:
    return pd.concat(
        [pd.read_parquet(p) for p in sorted(shards.glob("*.parquet"))], ignore_index=True
    )


def test_same_seed_gives_byte_identical_shards(tmp_path: Path) -> None:
    a = make_world(tmp_path / "a", world_params(**TINY))
    b = make_world(tmp_path / "b", world_params(**TINY))
    files_a = sorted(p.name for p in a["shards"].iterdir())
    assert files_a == sorted(p.name for p in b["shards"].iterdir()) and len(files_a) == 3
    for name in files_a:
        assert (a["shards"] / name).read_bytes() == (b["shards"] / name).read_bytes(), name
    assert a["world_json"].read_bytes() == b["world_json"].read_bytes()
    assert a["users"].read_bytes() == b["users"].read_bytes()
    other = smoke_config()
    other["seed"] += 1
    c = make_world(tmp_path / "c", world_params(other, **TINY))
    assert (c["shards"] / files_a[0]).read_bytes() != (a["shards"] / files_a[0]).read_bytes()


def test_shards_have_exactly_the_pickapic_v2_schema(smoke_world: dict[str, Path]) -> None:
    for path in sorted(smoke_world["shards"].glob("*.parquet")):
        assert pq.read_schema(path).remove_metadata() == PICKAPIC_V2_SCHEMA, path
    df = read_all(smoke_world["shards"])
    labels = set(zip(df["label_0"], df["label_1"], strict=True))
    assert labels == {(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)}
    winner = np.where(
        df["label_0"] == 1.0,
        df["image_0_uid"],
        np.where(df["label_1"] == 1.0, df["image_1_uid"], ""),
    )
    assert (df["best_image_uid"] == winner).all()
    assert df["ranking_id"].is_unique and df["are_different"].all() and df["has_label"].all()
    img = Image.open(io.BytesIO(df["jpg_0"].iloc[0]))
    assert img.format == "JPEG" and img.size == (16, 16)


def test_world_meets_its_configured_shape(smoke_world: dict[str, Path]) -> None:
    cfg = smoke_config()["world"]
    df = read_all(smoke_world["shards"])
    meta = json.loads(smoke_world["world_json"].read_text())
    users = pd.read_parquet(smoke_world["users"])
    assert len(df) == cfg["n_pairs"] and df["user_id"].nunique() == cfg["n_users"]
    assert abs((df["label_0"] == 0.5).mean() - cfg["tie_share"]) < 0.02
    per_user = df.groupby("user_id").size()
    assert per_user.max() >= 10 * per_user.median(), "pairs per user should be heavy-tailed"
    assert (users.set_index("user_id")["n_pairs"] == per_user).all()
    lam = users[[f"lambda_true_{k}" for k in range(cfg["n_types"])]].to_numpy()
    assert np.allclose(lam.sum(1), 1.0)
    assert (users["dominant_type"] == lam.argmax(1)).all()
    pure = users["is_pure"].to_numpy()
    assert np.allclose(lam[pure].max(1), 1.0) and 0.1 < pure.mean() < 0.3
    assert set(users["dominant_type"]) == set(range(cfg["n_types"]))
    # the style words move the rendering, so a generator can learn them from captions
    effect = meta["style_word_effect"]
    assert effect["bright"]["brightness"] > effect["none"]["brightness"] + 0.05
    assert effect["dark"]["brightness"] < effect["none"]["brightness"] - 0.05
    assert effect["vivid"]["saturation"] > effect["pale"]["saturation"] + 0.1
    assert effect["soft"]["sharpness"] < effect["crisp"]["sharpness"]
    # labels are informative but not deterministic: the oracle is the Bayes limit
    assert 0.65 < meta["oracle_accuracy_nontie"] < 0.9


def test_labels_are_reproduced_by_the_oracle_on_the_stored_jpegs(
    smoke_world: dict[str, Path],
) -> None:
    """oracle_reward on the decoded shard images gives exactly the reward differences that
    produced the labels: ties where |delta| < threshold, and the world's oracle accuracy."""
    truth = load_truth(smoke_world["truth"])
    df = read_all(smoke_world["shards"])
    imgs0 = np.stack([decode_jpeg(b) for b in df["jpg_0"]])
    imgs1 = np.stack([decode_jpeg(b) for b in df["jpg_1"]])
    caps, users = df["caption"].tolist(), df["user_id"].to_numpy()
    delta = oracle_reward(imgs0, caps, users, truth) - oracle_reward(imgs1, caps, users, truth)
    tie = df["label_0"].to_numpy() == 0.5
    assert ((np.abs(delta) < truth.tie_threshold) == tie).all()
    agree = np.mean((delta[~tie] > 0) == (df["label_0"].to_numpy()[~tie] == 1.0))
    assert agree == pytest.approx(truth.meta["oracle_accuracy_nontie"], abs=1e-12)


def test_oracle_scores_generated_like_images_of_any_form(smoke_world: dict[str, Path]) -> None:
    truth = load_truth(smoke_world["truth"])
    gen = np.random.default_rng(0)
    user = int(truth.users.index[0])
    floats_chw = gen.random((3, 3, 64, 64)).astype(np.float32)  # a sampler's [N,3,H,W] in [0,1]
    caps = [
        "a red star on a white background",
        "a bright blue circle on a black background",
        "a photo of a cat",
    ]  # the last names no palette colour: fidelity counts as average
    r = oracle_reward(floats_chw, caps, [user] * 3, truth)
    assert r.shape == (3,) and np.isfinite(r).all()
    pils = [Image.fromarray((gen.random((s, s, 3)) * 255).astype(np.uint8)) for s in (20, 32, 48)]
    assert np.isfinite(oracle_reward(pils, caps, [user] * 3, truth)).all()
    import torch

    chw = [torch.rand(3, s, s, generator=torch.Generator().manual_seed(s)) for s in (16, 24, 40)]
    assert np.isfinite(oracle_reward(chw, caps, [user] * 3, truth)).all()
    k = type_rewards(pils, caps, truth)
    assert k.shape == (3, truth.n_types)
    # the oracle is the user's lambda-mixture of the type rewards
    # two ways of forming the same float64 mixture: summation order only
    np.testing.assert_allclose(
        oracle_reward(pils, caps, [user] * 3, truth),
        k @ truth.lambdas([user])[0],
        rtol=1e-9,
        atol=1e-12,
    )
    with pytest.raises(KeyError, match="123456789"):
        oracle_reward(pils, caps, [user, user, 123456789], truth)


def _scene(
    colour: tuple[int, int, int],
    radius: int,
    bg: tuple[int, int, int] = (230, 230, 230),
    size: int = 64,
) -> Image.Image:
    img = Image.new("RGB", (size, size), bg)
    from PIL import ImageDraw

    c = size // 2
    ImageDraw.Draw(img).ellipse([c - radius, c - radius, c + radius, c + radius], fill=colour)
    return img


def test_pixel_functions_measure_what_they_name() -> None:
    red = _scene((215, 40, 40), 14)
    big = _scene((215, 40, 40), 24)
    blurred = red.filter(ImageFilter.GaussianBlur(3))
    dark = Image.eval(red, lambda v: v // 3)
    caps = ["a red circle on a white background"] * 4 + ["a green circle on a white background"]
    a = measure_attributes([red, big, blurred, dark, red], caps)
    assert list(a.columns) == list(ATTRIBUTES)
    assert a.loc[1, "object_size"] > 1.5 * a.loc[0, "object_size"]
    assert a.loc[2, "sharpness"] < 0.7 * a.loc[0, "sharpness"]
    assert a.loc[3, "brightness"] < 0.5 * a.loc[0, "brightness"]
    assert a.loc[0, "caption_fidelity"] > 0.9 > 0.1 > a.loc[4, "caption_fidelity"]
    assert a.loc[0, "warmth"] > 0
    # arrays and PIL images, any size, are measured alike
    b = measure_attributes(np.stack([np.asarray(red)]), caps[:1])
    # a batch of five PIL images vs one array: the same pixels, other batch shapes
    np.testing.assert_allclose(a.iloc[0].to_numpy(), b.iloc[0].to_numpy(), rtol=1e-5, atol=1e-8)


def test_mosaic_jpeg_roundtrip_equals_decoding_each_image() -> None:
    pixels = rng(0, "test").integers(0, 256, size=(37, 16, 16, 3), dtype=np.uint8)
    expected = np.stack([decode_jpeg(encode_jpeg(p, 90)) for p in pixels])
    assert np.array_equal(jpeg_roundtrip(pixels, 90), expected)


def test_allocate_pairs_is_exact_heavy_tailed_and_bounded() -> None:
    n = allocate_pairs(500, 40000, 1.6, 1, 1500, rng(0, "alloc"))
    assert n.sum() == 40000 and n.min() >= 1 and n.max() <= 1500
    assert np.percentile(n, 90) > 4 * np.median(n)
    with pytest.raises(ValueError, match="cannot be spread"):
        allocate_pairs(10, 5, 1.0, 1, 10, rng(0, "alloc"))
