"""The CLIP stage: open_clip local-dir round trip, preprocessing, training, retrieval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from prefgen.data.captions import describe
from prefgen.user_model.clip import (
    build_clip,
    encode_captions,
    encode_images,
    load_clip,
    pixel_tensor,
    retrieval_table,
    save_clip,
    train_clip,
)

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
}
BACKGROUNDS = {"white": (235, 235, 235), "black": (20, 20, 20), "grey": (128, 128, 128)}

PARAMS = {
    "source": "train",
    "name": "test-tiny-vit",
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.25, 0.25, 0.25],
    "model_cfg": {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 16,
            "patch_size": 4,
            "width": 32,
            "layers": 1,
            "head_width": 16,
        },
        "text_cfg": {
            "context_length": 12,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    },
    "train": {
        "epochs": 25,
        "batch_size": 64,
        "lr": 0.005,
        "weight_decay": 0.0,
        "warmup_steps": 5,
        "descriptors": [],
    },
    "eval": {"holdout_fraction": 0.0, "candidates": 4},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def scenes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Coloured squares on plain backgrounds, 16x16, with "a red square on a grey background"."""
    gen = np.random.default_rng(seed)
    cols, bgs = list(COLOURS), list(BACKGROUNDS)
    images = np.zeros((n, 16, 16, 3), dtype=np.uint8)
    captions = []
    for i in range(n):
        c, b = cols[gen.integers(len(cols))], bgs[gen.integers(len(bgs))]
        img = np.tile(np.array(BACKGROUNDS[b], dtype=np.float64), (16, 16, 1))
        s = gen.integers(5, 10)
        x, y = gen.integers(0, 16 - s, 2)
        img[y : y + s, x : x + s] = COLOURS[c]
        img += gen.normal(0, 6, img.shape)
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
        captions.append(f"a {c} square on a {b} background")
    return images, np.array(captions)


def test_local_dir_round_trip_and_bundled_tokenizer(tmp_path) -> None:
    import open_clip

    folder = tmp_path / "clip"
    folder.mkdir()
    model, cfg = build_clip(PARAMS, folder)
    save_clip(model, folder)
    meta = json.loads((folder / "open_clip_config.json").read_text())
    assert meta["model_cfg"] == PARAMS["model_cfg"]
    assert meta["prefgen"]["stand_in"]
    loaded, preprocess, tokenizer = load_clip(folder)
    assert isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer)  # bundled BPE, no download
    assert tokenizer(["a red square"]).shape == (1, 12)
    images, captions = scenes(8)
    model.eval()
    # the reloaded model is another set of modules and buffers: the same numbers up to the
    # order some CPU kernels sum in (float32, embeddings of norm ~1)
    with torch.no_grad():
        torch.testing.assert_close(
            encode_images(loaded, preprocess, images),
            encode_images(model, preprocess, images),
            rtol=1e-5,
            atol=1e-5,
        )
        torch.testing.assert_close(
            encode_captions(loaded, tokenizer, list(captions)),
            encode_captions(model, tokenizer, list(captions)),
            rtol=1e-5,
            atol=1e-5,
        )
    assert not any(p.requires_grad for p in loaded.parameters())


def test_fast_pixel_path_equals_open_clip_preprocess(tmp_path) -> None:
    folder = tmp_path / "clip"
    folder.mkdir()
    _, cfg = build_clip(PARAMS, folder)
    _, _, preprocess = load_clip_like(folder)  # (model, train transform, inference transform)
    images, _ = scenes(5)
    fast = pixel_tensor(images, preprocess, cfg["preprocess_cfg"])
    slow = pixel_tensor([Image.fromarray(x) for x in images], preprocess, cfg["preprocess_cfg"])
    # two code paths for (x/255 - mean)/std: a few float32 ulps apart at most (values <= 2)
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=0)
    # other sizes (generated samples) go through the resize; a bad array names its index
    big = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)
    assert pixel_tensor(big, preprocess, cfg["preprocess_cfg"]).shape == (5, 3, 16, 16)
    with pytest.raises(ValueError, match=r"images\[1\]"):
        pixel_tensor([images[0], images[1][..., :2]], preprocess, cfg["preprocess_cfg"])


def load_clip_like(folder):
    """A preprocess for a folder that has a config but no weights yet (open_clip's own)."""
    import open_clip

    return open_clip.create_model_and_transforms(f"local-dir:{folder}", load_weights=False)


def test_contrastive_training_retrieves_far_above_chance(tmp_path) -> None:
    folder = tmp_path / "clip"
    folder.mkdir()
    torch.manual_seed(0)
    model, cfg = build_clip(PARAMS, folder)
    import open_clip

    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    images, captions = scenes(512, seed=1)
    history = train_clip(
        model, tokenizer, images, list(captions), cfg["preprocess_cfg"], PARAMS["train"], seed=0
    )
    assert history[-1]["loss"] < history[0]["loss"]
    test_images, test_captions = scenes(300, seed=2)
    table = retrieval_table(
        model,
        tokenizer,
        test_images,
        test_captions,
        held_out=set(),
        n_candidates=4,
        seed=0,
        label="test",
    )
    all_caps = table[table["n_candidates"] == 12].iloc[0]
    assert all_caps["chance"] == pytest.approx(1 / 12)
    assert all_caps["accuracy"] > 0.5, table  # 6x chance after a few seconds of training


def test_descriptors_append_tercile_words() -> None:
    levels = np.linspace(10, 240, 60).astype(np.uint8)
    images = np.broadcast_to(levels[:, None, None, None], (60, 16, 16, 3)).copy()
    captions = ["a red square on a white background"] * 60
    out = describe(images, captions, ["brightness"])
    assert out[:20] == [captions[0] + ", dark"] * 20
    assert out[20:40] == captions[20:40]
    assert out[40:] == [captions[0] + ", bright"] * 20
    assert describe(images, captions, []) == captions
    with pytest.raises(ValueError, match="unknown attribute"):
        describe(images, captions, ["loudness"])


def test_object_colour_recaptions_with_the_colour_drawn() -> None:
    """Wrong-colour objects get the colour they have; right ones, grey ones and no-colour captions
    behave as documented (the caption describes the picture, not the prompt)."""
    images = np.tile(np.array(BACKGROUNDS["grey"], dtype=np.uint8), (4, 16, 16, 1))
    images[0, 4:12, 4:12] = COLOURS["blue"]  # asked red, drawn blue
    images[1, 4:12, 4:12] = COLOURS["red"]  # asked red, drawn red
    images[2, 4:12, 4:12] = (200, 200, 200)  # asked red, drawn unsaturated
    images[3, 4:12, 4:12] = COLOURS["green"]  # caption names no palette colour
    captions = ["a pale red square on a grey background"] * 3 + ["a square on a red background"]
    out = describe(images, captions, ["object_colour"])
    assert out == [
        "a pale blue square on a grey background",
        "a pale red square on a grey background",
        "a pale grey square on a grey background",
        "a square on a red background",
    ]
    both = describe(images, captions, ["object_colour", "object_size"])
    assert both[0].startswith("a pale blue square on a grey background")


def test_descriptors_five_levels_say_how_much() -> None:
    levels = np.linspace(10, 240, 60).astype(np.uint8)
    images = np.broadcast_to(levels[:, None, None, None], (60, 16, 16, 3)).copy()
    captions = ["a red square on a white background"] * 60
    out = describe(images, captions, ["brightness"], levels=5)
    assert out[:12] == [captions[0] + ", very dark"] * 12
    assert out[12:24] == [captions[0] + ", dark"] * 12
    assert out[24:36] == captions[24:36]
    assert out[36:48] == [captions[0] + ", bright"] * 12
    assert out[48:] == [captions[0] + ", very bright"] * 12
    with pytest.raises(ValueError, match="descriptor_levels"):
        describe(images, captions, ["brightness"], levels=4)


def test_colour_purity_grades_the_drawn_colour_against_its_name() -> None:
    """True-to-palette objects are "true-colour", clearly hue-shifted ones "off-colour";
    with object_colour the grade is against the colour drawn (a clean blue drawn for "red" is a
    true-colour blue), so the word describes the picture, never the prompt."""
    images = np.tile(np.array(BACKGROUNDS["grey"], dtype=np.uint8), (6, 16, 16, 1))
    images[0, 4:12, 4:12] = (215, 40, 40)  # palette red
    images[1, 4:12, 4:12] = (45, 85, 215)  # palette blue, asked red
    images[2:4, 4:12, 4:12] = (215, 58, 40)  # red, 6 degrees towards orange
    images[4:6, 4:12, 4:12] = (215, 84, 40)  # red, 15 degrees towards orange
    captions = ["a red square on a grey background"] * 6
    out = describe(images, captions, ["object_colour", "colour_purity"])
    assert out[0] == "a red square on a grey background, true-colour"
    assert out[1] == "a blue square on a grey background, true-colour"
    assert out[2:4] == [captions[0]] * 2
    assert all(o.endswith(", off-colour") for o in out[4:]), out
