"""PPD's VLM user embedding: the few-shot prompt, the stand-in, the command.

Acceptance points tested here: the prompt holds exactly N=4 examples with the preferred and
dispreferred images in the documented order (and the processor maps the images in that order);
embeddings are deterministic for a fixed seed; the processor/tokenizer round-trips the image
token count; a user with fewer than 4 pairs is excluded with a counted reason.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from prefgen.cli import main as cli_main
from prefgen.core.config import ConfigError
from prefgen.core.io import load_tensors
from prefgen.embeddings import ppd, vlm_pretrain
from prefgen.embeddings.vlm import (
    PRETRAINED_STAND_IN_LABEL,
    STAND_IN_LABEL,
    build_stand_in,
    copy_clip_visual_to_siglip,
    load_vlm,
)
from safetensors import safe_open

IMAGE_SIZE = 16

#: The smoke-scale stand-in with a random vision tower (the CLIP path has its own test).
VLM_CFG: dict[str, Any] = {
    "model": "stand-in",
    "device": "cpu",
    "dtype": "float32",
    "batch_size": 3,
    "stand_in": {
        "vocab_size": 512,
        "initializer_range": 0.02,
        "vision_init": "random",
        "vision": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "patch_size": 4,
            "image_size": IMAGE_SIZE,
        },
        "text": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
    },
    "pretrain": {"steps": 0, "batch_size": 4, "lr": 0.01, "warmup_steps": 2, "weight_decay": 0.0},
}
EMB_CFG = {"n_shots": 4, "layer": -1, "pooling": "last", "profile_tokens": 0, "exclude_ties": True}


def jpeg(rgb: tuple[int, int, int], size: int = IMAGE_SIZE) -> bytes:
    img = Image.new("RGB", (size, size), rgb)
    img.paste(tuple(255 - c for c in rgb), (size // 4, size // 4, size // 2, size // 2))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def make_world(
    root: Path, pairs_per_user: dict[int, int], ties: dict[int, int] | None = None, seed: int = 0
) -> dict[str, Path]:
    """A tiny PPD split on disk: train/test_unseen tables and the images they name.

    ``pairs_per_user`` maps user_id -> number of pairs; users >= 900 are held out (test_unseen).
    ``ties`` marks that many of a user's pairs as ties. Each user prefers brighter images with
    a user-specific colour cast, so users differ in taste.
    """
    gen = np.random.default_rng(seed)
    ties = ties or {}
    rows, images = [], {}
    rid = 1
    for user, n in pairs_per_user.items():
        cast = gen.integers(0, 3)
        for i in range(n):
            pair = []
            for side in range(2):
                rgb = gen.integers(0, 256, 3)
                rgb[cast] = 255 if side == 0 else rgb[cast] // 3
                uid = f"img-{user}-{i}-{side}"
                images[uid] = jpeg(tuple(int(c) for c in rgb))
                pair.append(uid)
            rows.append(
                {
                    "ranking_id": rid,
                    "user_id": user,
                    "caption": f"a shape number {i}",
                    "prompt_id": i,
                    "image_w_uid": pair[0],
                    "image_l_uid": pair[1],
                    "is_tie": i < ties.get(user, 0),
                }
            )
            rid += 1
    df = pd.DataFrame(rows).astype(
        {"ranking_id": "int64", "user_id": "int64", "prompt_id": "int64"}
    )
    paths = {
        "train": root / "train.parquet",
        "test_unseen": root / "test_unseen.parquet",
        "images": root / "images.parquet",
    }
    df[df["user_id"] < 900].to_parquet(paths["train"], index=False)
    df[df["user_id"] >= 900].to_parquet(paths["test_unseen"], index=False)
    pd.DataFrame({"image_uid": list(images), "jpg": list(images.values())}).to_parquet(
        paths["images"], index=False
    )
    return paths


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ppd_world")
    # 1: 3 pairs (< N), 2: 5 pairs of which 2 ties (3 usable < N), 3..5: enough, 901: unseen
    return make_world(root, {1: 3, 2: 5, 3: 6, 4: 4, 5: 9, 901: 7, 902: 2}, ties={2: 2, 5: 1})


@pytest.fixture(scope="module")
def vlm() -> Any:
    return load_vlm(VLM_CFG, seed=0)


def test_prompt_holds_n_examples_in_documented_order(world: dict[str, Path], vlm: Any) -> None:
    train = ppd.read_split(world["train"])
    shots, _ = ppd.select_shots(train, 4, True, seed=0)
    user = shots[shots["user_id"] == 5].sort_values("shot")
    assert (
        len(user) == 4 and not train.set_index("ranking_id").loc[user["ranking_id"], "is_tie"].any()
    )
    token = vlm.processor.image_token
    question, uids = ppd.build_prompt(user.sample(frac=1, random_state=1), token)

    assert len(re.findall(r"Example \d+\. Caption: ", question)) == 4
    assert question.count(token) == 8
    # per example: its caption, then the preferred image, then the dispreferred image
    expected = [u for row in user.itertuples() for u in (row.image_w_uid, row.image_l_uid)]
    assert uids == expected
    labels = re.findall(re.escape(token) + r" (This is the (?:dis)?preferred image\.)", question)
    assert labels == [ppd.PREFERRED, ppd.DISPREFERRED] * 4
    for i, row in enumerate(user.itertuples(), start=1):
        block = question.split(f"Example {i}. Caption: ")[1]
        assert block.startswith(row.caption)

    # the processor maps the images onto the image tokens in that same order
    images = ppd.load_pil_images(world["images"], uids)
    text = ppd.chat_text(vlm.processor, question)
    inputs = vlm.processor(text=[text], images=[[images[u] for u in uids]], return_tensors="pt")
    one_by_one = torch.cat(
        [
            vlm.processor.image_processor(images[u], return_tensors="pt")["pixel_values"][:, 0]
            for u in uids
        ]
    )  # [:, 0]: the base-resolution view
    assert inputs["pixel_values"].shape[:2] == (8, 1)
    # a batch through the processor vs one image at a time: rescale and normalise may run
    # batched, so float32 rounding may differ; images differ by far more (checked next)
    torch.testing.assert_close(inputs["pixel_values"][:, 0], one_by_one, rtol=0, atol=1e-6)
    assert not torch.equal(one_by_one[0], one_by_one[1])


def test_processor_round_trips_image_token_count(vlm: Any) -> None:
    proc, tok = vlm.processor, vlm.processor.tokenizer
    assert tok.convert_tokens_to_ids(proc.image_token) == vlm.model.config.image_token_id
    text = ppd.chat_text(proc, f"one {proc.image_token} two {proc.image_token} done")
    ids = tok(text)["input_ids"]
    assert ids.count(vlm.model.config.image_token_id) == 2
    assert tok.decode(ids) == text

    per_image = (IMAGE_SIZE // 4) ** 2 + 1  # base patches + the newline feature (multi-image)
    imgs = [Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (i * 40, 10, 200)) for i in range(2)]
    inputs = proc(text=[text], images=[imgs], return_tensors="pt")
    image_ids = inputs["input_ids"][0] == vlm.model.config.image_token_id
    assert int(image_ids.sum()) == 2 * per_image
    # the expanded tokens form two contiguous runs, one per image, where the markers were
    runs = torch.diff(torch.cat([torch.tensor([0]), image_ids.int(), torch.tensor([0])]))
    assert (runs == 1).sum() == 2 and (runs == -1).sum() == 2
    # and the model consumes exactly that many visual features (it raises on a mismatch)
    with torch.no_grad():
        out = vlm.model.model(**inputs)
    assert out.image_outputs.pooler_output[0].shape[0] == per_image


def test_embeddings_deterministic_for_fixed_seed(world: dict[str, Path]) -> None:
    train = ppd.read_split(world["train"])
    shots, _ = ppd.select_shots(train, 4, True, seed=0)
    shots_again, _ = ppd.select_shots(train, 4, True, seed=0)
    pd.testing.assert_frame_equal(shots, shots_again)
    images = ppd.load_pil_images(
        world["images"], pd.concat([shots["image_w_uid"], shots["image_l_uid"]])
    )

    def embed(seed: int, batch_size: int) -> torch.Tensor:
        model = load_vlm(VLM_CFG, seed=seed)
        return ppd.embed_shots(model, shots, images, EMB_CFG, batch_size)[1]

    a, b = embed(0, 3), embed(0, 3)
    assert torch.equal(a, b)  # the same computation twice in one process: exact
    assert a.shape == (shots["user_id"].nunique(), 32) and torch.isfinite(a).all()
    # users are not collapsed onto one vector, another seed is another model
    assert torch.cdist(a, a).fill_diagonal_(1.0).min() > 1e-4
    assert not torch.allclose(a, embed(1, 3))
    # left padding does not change a prompt's embedding (other batch shapes and masked
    # positions: float32 attention sums in another order)
    torch.testing.assert_close(embed(0, 1), a, rtol=1e-4, atol=1e-5)


def test_profile_read_out_is_the_state_before_the_final_profile_token(vlm: Any) -> None:
    """PPD reads the last generation step: the prompt + profile without its final token."""
    proc = vlm.processor
    imgs = [
        [Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (i * 60, 90, 30 * j)) for j in range(2)]
        for i in range(2)
    ]
    texts = [
        ppd.chat_text(proc, f"user {i}: {proc.image_token} then {proc.image_token}")
        for i in range(2)
    ]
    inputs = proc(text=texts, images=imgs, return_tensors="pt", padding=True)
    with torch.no_grad():
        extended = ppd.with_profile(vlm, dict(inputs), profile_tokens=5)
    prompt_len = inputs["input_ids"].shape[1]
    new = extended["input_ids"][:, prompt_len:]
    kept = extended["attention_mask"][:, prompt_len:]
    assert not (new == vlm.model.config.image_token_id).any()
    eos = vlm.processor.tokenizer.eos_token_id
    for row, mask in zip(new.tolist(), kept.tolist(), strict=True):
        n_profile = row.index(eos) + 1 if eos in row else len(row)
        assert mask == [1] * (n_profile - 1) + [0] * (len(row) - n_profile + 1)

    cfg = {**EMB_CFG, "profile_tokens": 5}
    with_text = ppd.embed_prompts(vlm, texts, imgs, -1, "last", 2, cfg["profile_tokens"])
    prompt_only = ppd.embed_prompts(vlm, texts, imgs, -1, "last", 2, 0)
    assert with_text.shape == prompt_only.shape and not torch.allclose(with_text, prompt_only)
    # one prompt at a time vs a padded batch of two: float32 summation order only
    torch.testing.assert_close(
        ppd.embed_prompts(vlm, texts, imgs, -1, "last", 1, 5), with_text, rtol=1e-4, atol=1e-5
    )


def test_vlm_embeddings_command_excludes_users_with_few_pairs(
    world: dict[str, Path], tmp_path: Path
) -> None:
    out = {k: tmp_path / f"ppd{k}" for k in (".safetensors", "_shots.parquet", "_stats.json")}
    params = {"seed": 0, "vlm": VLM_CFG, "ppd": {"embedding": EMB_CFG}}
    code = cli_main(
        [
            "vlm-embeddings",
            "--params",
            json.dumps(params),
            "--train",
            str(world["train"]),
            "--support",
            str(world["test_unseen"]),
            "--images",
            str(world["images"]),
            "--out",
            str(out[".safetensors"]),
            "--shots",
            str(out["_shots.parquet"]),
            "--stats",
            str(out["_stats.json"]),
        ]
    )
    assert code == 0
    stats = json.loads(out["_stats.json"].read_text())
    assert stats["excluded"] == {
        "seen": {ppd.REASON_FEW_PAIRS: 1, ppd.REASON_TIES: 1},
        "unseen": {ppd.REASON_FEW_PAIRS: 1},
    }
    assert stats["excluded_user_ids"] == {"seen": [1, 2], "unseen": [902]}
    assert stats["n_users"] == {"seen": 3, "unseen": 1} and stats["unseen_user_ids"] == [901]

    tensors = load_tensors(out[".safetensors"])
    assert tensors["user_ids"].dtype == torch.int64
    assert tensors["user_ids"].tolist() == [3, 4, 5, 901]
    assert tensors["emb"].shape == (4, 32)
    with safe_open(str(out[".safetensors"]), "pt") as f:
        meta = f.metadata()
    assert meta["vlm_stand_in"] == "true" and STAND_IN_LABEL in meta["vlm_config"]

    shots = pd.read_parquet(out["_shots.parquet"])
    assert shots.groupby("user_id").size().to_dict() == {3: 4, 4: 4, 5: 4, 901: 4}
    unseen = pd.read_parquet(world["test_unseen"])
    assert set(shots.loc[shots["user_id"] == 901, "ranking_id"]) <= set(unseen["ranking_id"])


def test_missing_image_is_named(world: dict[str, Path], tmp_path: Path) -> None:
    images = pd.read_parquet(world["images"])
    images.iloc[1:].to_parquet(tmp_path / "images.parquet", index=False)
    with pytest.raises(ValueError, match=re.escape(str(images["image_uid"].iloc[0]))):
        ppd.load_pil_images(tmp_path / "images.parquet", images["image_uid"].iloc[:3])


def test_clip_vision_weights_reproduce_the_clip_blocks(tmp_path: Path) -> None:
    """The SigLIP tower initialised from an open_clip ViT computes the same transformer blocks."""
    from prefgen.user_model.clip import build_clip, save_clip

    clip_params = {
        "source": "train",
        "name": "test",
        "image_mean": [0.5] * 3,
        "image_std": [0.25] * 3,
        "model_cfg": {
            "embed_dim": 16,
            "vision_cfg": {
                "image_size": IMAGE_SIZE,
                "patch_size": 4,
                "width": 32,
                "layers": 2,
                "head_width": 16,
                "mlp_ratio": 2.0,
            },
            "text_cfg": {
                "context_length": 8,
                "vocab_size": 49408,
                "width": 16,
                "heads": 2,
                "layers": 1,
            },
        },
    }
    torch.manual_seed(0)
    model, _ = build_clip(clip_params, tmp_path)
    save_clip(model, tmp_path)
    cfg = json.loads(json.dumps(VLM_CFG["stand_in"]))
    cfg["vision_init"] = "clip"
    stand_in = build_stand_in(cfg, seed=0, clip_dir=tmp_path)
    siglip = stand_in.model.model.vision_tower
    visual = model.visual.eval()
    assert siglip.config.hidden_size == 32 and siglip.config.num_hidden_layers == 2
    assert list(stand_in.processor.image_processor.image_mean) == [0.5] * 3

    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        tokens = siglip.embeddings(pixels)
        patches = visual.conv1(pixels).flatten(2).transpose(1, 2)
        # SigLIP's patch embedding vs CLIP's conv: the same weights, other kernels
        torch.testing.assert_close(
            tokens, patches + visual.positional_embedding[1:], rtol=1e-5, atol=1e-5
        )
        ref = tokens
        for block in visual.transformer.resblocks:
            ref = block(ref)
        ours = siglip.encoder(tokens).last_hidden_state
    # two implementations of the same blocks (two layers, float32): summation order only
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    # every CLIP tensor with a SigLIP counterpart: patch, position, 16 per block, final norm
    assert copy_clip_visual_to_siglip(visual, siglip) == 3 + 16 * 2 + 2

    # a ViT SigLIP cannot express (layer scale) is refused, not silently mis-copied
    clip_params["model_cfg"]["vision_cfg"]["ls_init_value"] = 0.1
    (tmp_path / "ls").mkdir()
    save_clip(build_clip(clip_params, tmp_path / "ls")[0], tmp_path / "ls")
    with pytest.raises(ConfigError, match="layer scale"):
        build_stand_in(cfg, seed=0, clip_dir=tmp_path / "ls")


def test_checkpoint_path_loads_through_from_pretrained(
    world: dict[str, Path], vlm: Any, tmp_path: Path
) -> None:
    """Paper scale's code path (from_pretrained + AutoProcessor) on the saved stand-in."""
    vlm.model.save_pretrained(tmp_path / "ckpt")
    vlm.processor.save_pretrained(tmp_path / "ckpt")
    loaded = load_vlm({**VLM_CFG, "model": str(tmp_path / "ckpt")}, seed=123)
    assert not loaded.stand_in and loaded.name == str(tmp_path / "ckpt")
    assert loaded.processor.tokenizer.padding_side == "left"
    train = ppd.read_split(world["train"])
    shots, _ = ppd.select_shots(train, 4, True, seed=0)
    images = ppd.load_pil_images(
        world["images"], pd.concat([shots["image_w_uid"], shots["image_l_uid"]])
    )
    ours = ppd.embed_shots(vlm, shots, images, EMB_CFG, 3)[1]
    theirs = ppd.embed_shots(loaded, shots, images, EMB_CFG, 3)[1]
    # from_pretrained rebuilds the model from the saved weights: the same numbers up to the
    # order some CPU kernels sum in
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


# --- the pre-trained stand-in (vlm_pretrain) -----------------------------------------------------


def test_profile_answer_names_the_side_the_preferred_images_lean_to() -> None:
    cols = ["brightness", "caption_fidelity"]
    w = pd.DataFrame([[0.9, np.nan], [0.2, np.nan]], columns=cols)
    l_ = pd.DataFrame([[0.1, np.nan], [0.4, np.nan]], columns=cols)
    # brighter on average (+0.3); fidelity undefined on every shot: no word for it
    assert vlm_pretrain.profile_answer(w, l_) == "bright."
    assert vlm_pretrain.profile_answer(l_, w) == "dark."


@pytest.fixture(scope="module")
def taste_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Training users of two tastes, for a short instruction tuning: in every pair one image is
    bright and one dark (random hues); odd users prefer the bright one, even users the dark one.
    Held-out user 901 prefers the bright one."""
    root = tmp_path_factory.mktemp("ppd_taste_world")
    paths = make_world(root, {u: 16 for u in range(1, 17)} | {901: 8}, seed=3)
    gen = np.random.default_rng(4)
    images = pd.read_parquet(paths["images"])
    bright = images["image_uid"].str.endswith("-0")  # side 0: the first image of each pair
    images["jpg"] = [
        jpeg(tuple(int(c) for c in gen.integers(190, 256, 3)))
        if is_bright
        else jpeg(tuple(int(c) for c in gen.integers(0, 60, 3)))
        for is_bright in bright
    ]
    images.to_parquet(paths["images"], index=False)
    train = pd.read_parquet(paths["train"])
    dark = train["user_id"] % 2 == 0
    train.loc[dark, ["image_w_uid", "image_l_uid"]] = train.loc[
        dark, ["image_l_uid", "image_w_uid"]
    ].to_numpy()
    train.to_parquet(paths["train"], index=False)
    return paths


PRETRAIN_CFG = {**VLM_CFG, "pretrain": {**VLM_CFG["pretrain"], "steps": 80}}


@pytest.fixture(scope="module")
def pretrained_dir(taste_world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vlm_stand_in") / "vlm_stand_in"
    params = {"seed": 0, "vlm": PRETRAIN_CFG, "ppd": {"embedding": EMB_CFG}}
    args = ["--train", str(taste_world["train"]), "--images", str(taste_world["images"])]
    code = cli_main(["vlm-pretrain", "--params", json.dumps(params), *args, "--out-dir", str(out)])
    assert code == 0
    return out


def test_pretrained_stand_in_reads_which_image_was_preferred(
    taste_world: dict[str, Path], pretrained_dir: Path
) -> None:
    """After vlm_pretrain the stand-in's PPD embedding depends on which image was preferred.

    Held-out user 901 prefers the bright image of every pair. Swapping the labels of the same
    shots moves the tuned stand-in's embedding far more than the random stand-in's (whose
    language model mixes the image tokens nearly order-blind: mini probe ppd = its control),
    and moves its answer towards "dark" (its training users have both tastes, so an answer
    that ignores the images cannot do that).
    """
    tuned = load_vlm(PRETRAIN_CFG, seed=0, stand_in_dir=pretrained_dir)
    random_lm = load_vlm(VLM_CFG, seed=0)
    assert tuned.label == PRETRAINED_STAND_IN_LABEL and random_lm.label == STAND_IN_LABEL
    meta = json.loads((pretrained_dir / vlm_pretrain.META_NAME).read_text())
    losses = (meta["history"][0]["loss"], meta["history"][-1]["loss"])

    unseen = ppd.read_split(taste_world["test_unseen"])
    shots, _ = ppd.select_shots(unseen, 4, True, seed=0)
    swapped = shots.assign(image_w_uid=shots["image_l_uid"], image_l_uid=shots["image_w_uid"])
    images = ppd.load_pil_images(
        taste_world["images"], pd.concat([shots["image_w_uid"], shots["image_l_uid"]])
    )

    cfg_emb = {**EMB_CFG, "layer": -1, "profile_tokens": 0}  # the prompt's last token

    def swap_gap(model: Any) -> float:
        a = ppd.embed_shots(model, shots, images, cfg_emb, 2)[1]
        b = ppd.embed_shots(model, swapped, images, cfg_emb, 2)[1]
        return float((a - b).norm() / a.norm())

    def lean(model: Any, group: pd.DataFrame) -> float:
        """log p("bright") - log p("dark") for the profile's first word."""
        question, uids = ppd.build_prompt(group, model.processor.image_token)
        text = ppd.chat_text(model.processor, question)
        inputs = model.processor(
            text=[text], images=[[images[u] for u in uids]], return_tensors="pt"
        )
        tok = model.processor.tokenizer
        with torch.no_grad():
            logits = model.model(**inputs).logits[0, -1]
        bright, dark = (
            tok(w, add_special_tokens=False)["input_ids"][0] for w in ("bright", "dark")
        )
        return float(logits[bright] - logits[dark])

    leans = (lean(tuned, shots), lean(tuned, swapped))
    gaps = (swap_gap(tuned), swap_gap(random_lm))
    seen = f"losses {losses}, bright-dark leans {leans}, swap gaps tuned/random {gaps}"
    assert losses[1] < losses[0] / 2, seen
    # the embedding depends on which image was preferred (the random LM's barely does)
    assert gaps[0] > 5 * gaps[1], seen
    # and in the direction the labels say: swapping them moves the answer towards "dark"
    assert leans[0] > leans[1], seen


def test_pretrain_config_needs_the_weights(pretrained_dir: Path) -> None:
    with pytest.raises(ConfigError, match="vlm_pretrain"):
        load_vlm(PRETRAIN_CFG, seed=0)
    # weights written under another shape are refused with the file named
    other = json.loads(json.dumps(PRETRAIN_CFG))
    other["stand_in"]["text"]["hidden_size"] = 48
    with pytest.raises(ValueError, match="model.safetensors"):
        load_vlm(other, seed=0, stand_in_dir=pretrained_dir)
