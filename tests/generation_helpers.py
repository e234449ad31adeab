"""Small fixtures shared by the generation tests (not a test module).

Everything is built from ``config/smoke.yaml`` (the shipped smallest config), on a few hundred
procedurally drawn 16x16 images, so the tests exercise the same code paths as the workflow in
seconds: a tiny untrained SDXL-architecture pipeline saved with ``save_pretrained``, split-like
pair tables, an evaluation set, user embeddings and the encoded cache.

The pairs carry a planted preference so DPO has something to learn: users of group A prefer the
brighter image of a pair, users of group B the darker one.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from prefgen.core.config import REPO_ROOT, load_config
from prefgen.core.io import save_tensors, write_parquet

COLOURS = {"red": (215, 40, 40), "green": (50, 165, 60), "blue": (45, 85, 215)}
SHAPES = ("circle", "square")


def smoke_config() -> dict[str, Any]:
    return load_config(REPO_ROOT / "config" / "smoke.yaml")


def render(
    colour: str, shape: str, brightness: float, size: int, gen: np.random.Generator
) -> np.ndarray:
    """A coloured shape on a grey background, scaled in brightness (uint8 [size,size,3])."""
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    r = gen.uniform(0.2, 0.35)
    mask = (xx**2 + yy**2 < r**2) if shape == "circle" else (np.abs(xx) < r) & (np.abs(yy) < r)
    img = np.full((size, size, 3), 128.0)
    img[mask] = COLOURS[colour]
    return np.clip(img * brightness + gen.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def make_world(
    root: Path,
    n_users: int = 8,
    pairs_per_user: int = 24,
    size: int = 16,
    n_eval_prompts: int = 3,
    seed: int = 0,
    everyone_bright: bool = False,
) -> dict[str, Path]:
    """Write images/pipe_train/holdout/eval_set parquets and pipe.safetensors under ``root``.

    Users 1..n: odd ids prefer bright images, even ids dark ones (all prefer bright with
    ``everyone_bright``); the last user is held out (in the holdout table, like
    splits/ppd/test_unseen.parquet). Every fourth pair is a tie.
    """
    gen = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    images, pairs = [], []
    users = np.arange(1, n_users + 1)
    rid = 0
    for u in users:
        for _ in range(pairs_per_user):
            colour = list(COLOURS)[gen.integers(len(COLOURS))]
            shape = SHAPES[gen.integers(len(SHAPES))]
            caption = f"a {colour} {shape} on a grey background"
            bright, dark = gen.uniform(1.3, 1.6), gen.uniform(0.4, 0.7)
            uids = []
            for b in (bright, dark):
                uid = f"img-{len(images):05d}"
                images.append({"image_uid": uid, "jpg": jpeg(render(colour, shape, b, size, gen))})
                uids.append(uid)
            w, lose = (uids[0], uids[1]) if u % 2 or everyone_bright else (uids[1], uids[0])
            rid += 1
            pairs.append(
                {
                    "ranking_id": rid,
                    "user_id": int(u),
                    "caption": caption,
                    "prompt_id": int(gen.integers(0, 10)),
                    "image_w_uid": w,
                    "image_l_uid": lose,
                    "is_tie": rid % 4 == 0,
                }
            )
    paths = {
        name: root / f"{name}.parquet" for name in ("images", "pipe_train", "holdout", "eval_set")
    }
    write_parquet(pd.DataFrame(images), paths["images"])
    write_parquet(pd.DataFrame(pairs), paths["pipe_train"])
    write_parquet(pd.DataFrame({"ranking_id": [0], "user_id": [int(users[-1])]}), paths["holdout"])
    evals = []
    for u in [*users[:3], users[-1], 999]:  # 999: a user with no embedding
        for p in range(n_eval_prompts):
            colour = list(COLOURS)[p % len(COLOURS)]
            evals.append(
                {
                    "user_id": int(u),
                    "user_group": "unseen" if u >= users[-1] else "seen",
                    "prompt_id": 100 + p,
                    "caption": f"a {colour} circle on a grey background",
                    "seed": 1000 + p,
                }
            )
    write_parquet(pd.DataFrame(evals), paths["eval_set"])
    emb = torch.zeros(n_users, 8)
    emb[:, 0] = torch.tensor([1.0 if u % 2 else -1.0 for u in users])
    emb[:, 1:] = 0.1 * torch.randn(n_users, 7, generator=torch.Generator().manual_seed(seed))
    paths["embeddings"] = root / "pipe.safetensors"
    save_tensors(
        {"user_ids": torch.from_numpy(users.astype(np.int64)), "emb": emb}, paths["embeddings"]
    )
    return paths


def tiny_pipeline(root: Path, cfg: dict[str, Any] | None = None, seed: int = 0) -> Path:
    """An untrained stand-in pipeline (smoke sizes), saved with save_pretrained; its folder."""
    from prefgen.generation.models import build_tiny_sdxl

    cfg = cfg or smoke_config()["foundation"]
    pipe = build_tiny_sdxl(cfg, resolution=int(cfg["resolution"]), seed=seed)
    out = root / "foundation"
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def trained_pipeline(
    root: Path, paths: dict[str, Path], unet_steps: int = 150, seed: int = 0
) -> Path:
    """A stand-in briefly trained on the fixture images.

    DPO needs a reference that actually denoises: with a random UNet the residual is noise and
    no adapter can make winners systematically easier to denoise than losers.
    """
    from prefgen.generation.foundation import image_captions, train_foundation
    from prefgen.generation.images import load_images

    cfg = smoke_config()["foundation"]
    cfg = cfg | {
        "vae": cfg["vae"] | {"steps": 60},
        "unet": cfg["unet"] | {"steps": unet_steps, "lr": 3e-3},
    }
    rows = image_captions(
        pd.read_parquet(paths["pipe_train"]),
        pd.read_parquet(paths["images"], columns=["image_uid"]),
        "pairs",
    )
    pixels = load_images(paths["images"], rows["image_uid"].tolist(), int(cfg["resolution"]))
    pipe, _ = train_foundation(pixels, rows["caption"].tolist(), cfg, seed)
    out = root / "foundation_trained"
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def encode_cache(root: Path, paths: dict[str, Path], foundation: Path) -> dict[str, Path]:
    """Run the ``encode`` stage on the fixture world; returns the cache paths."""
    from prefgen.cli import main

    out = {
        "encoded": root / "cache" / "train.safetensors",
        "image_index": root / "cache" / "images.parquet",
        "caption_index": root / "cache" / "captions.parquet",
    }
    rc = main(
        [
            "encode",
            "--params",
            '{"encode": {"batch_size": 64}}',
            "--foundation",
            str(foundation),
            "--images",
            str(paths["images"]),
            "--pairs",
            str(paths["pipe_train"]),
            "--holdout",
            str(paths["holdout"]),
            "--out",
            str(out["encoded"]),
            "--image-index",
            str(out["image_index"]),
            "--caption-index",
            str(out["caption_index"]),
        ]
    )
    assert rc == 0
    return out


_SHARED: dict[str, dict[str, Path]] = {}


def shared_setup(tmp_path_factory: Any, kind: str) -> dict[str, Path]:
    """Fixture world + foundation + encoded cache, built once per test session and kind.

    ``personal``: users prefer bright or dark by id parity, untrained foundation (tests of
    mechanics: resume, processes, sampling). ``population``: everyone prefers bright, briefly
    trained foundation (tests that DPO learns).
    """
    if kind not in _SHARED:
        torch.set_num_threads(1)
        root = tmp_path_factory.mktemp(f"gen-{kind}")
        if kind == "personal":
            paths = make_world(root / "world")
            foundation = tiny_pipeline(root)
        elif kind == "population":
            paths = make_world(root / "world", n_users=6, pairs_per_user=32, everyone_bright=True)
            foundation = trained_pipeline(root, paths, unet_steps=150)
        else:
            raise ValueError(kind)
        _SHARED[kind] = {
            **paths,
            "foundation": foundation,
            "root": root,
            **encode_cache(root, paths, foundation),
        }
    return _SHARED[kind]


def train_args(
    setup: dict[str, Path],
    method: str,
    out: Path,
    train_cfg: dict[str, Any],
    seed: int = 0,
    train_seed: int | None = None,
) -> list[str]:
    """``prefgen train-adapter`` arguments for a fixture setup (``train_seed``: one entry of
    ``train.seeds``, as the rule passes it)."""
    import json

    params: dict[str, Any] = {"seed": seed, "train": train_cfg}
    if train_seed is not None:
        params["train_seed"] = train_seed
    args = [
        "train-adapter",
        "--params",
        json.dumps(params),
        "--method",
        method,
        "--foundation",
        str(setup["foundation"]),
        "--encoded",
        str(setup["encoded"]),
        "--image-index",
        str(setup["image_index"]),
        "--caption-index",
        str(setup["caption_index"]),
        "--pairs",
        str(setup["pipe_train"]),
        "--holdout",
        str(setup["holdout"]),
        "--out",
        str(out),
    ]
    if train_cfg["methods"][method].get("embedding"):
        args += ["--embeddings", str(setup["embeddings"])]
    return args
