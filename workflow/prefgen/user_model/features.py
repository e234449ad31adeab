"""``prefgen features``: frozen CLIP embeddings of the splits' images and captions (PIPE Eq. 1).

The user model never fine-tunes CLIP (PIPE §2.2: "frozen CLIP image and text encoders"), so
each image and caption is embedded exactly once here and every later stage indexes the cache:
``features/images.safetensors`` (``emb [N,D]``) with ``features/images.parquet``
(``image_uid, row``), and the same for captions (``caption, row``). Embeddings are
L2-normalised, float32.

:class:`ClipEmbedder` embeds *arbitrary* images and captions with the same model and preprocess,
for the judges that score generated images.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from prefgen.core.io import load_tensors, save_tensors, write_parquet
from prefgen.core.logging import get_logger
from prefgen.user_model.clip import ImageBatch, encode_captions, encode_images, load_clip
from prefgen.user_model.imageio import load_images

log = get_logger(__name__)

#: Columns of the split tables that hold image uids / captions (interfaces.md §data).
IMAGE_COLUMNS = ("image_w_uid", "image_l_uid", "image_uid", "candidate_uids")
CAPTION_COLUMNS = ("caption",)


class ClipEmbedder:
    """Frozen CLIP image/text encoders from a ``models/clip`` folder, for any images or captions."""

    def __init__(self, clip_dir: str | Path, batch_size: int = 256) -> None:
        self.clip_dir = Path(clip_dir)
        self.model, self.preprocess, self.tokenizer = load_clip(self.clip_dir)
        self.batch_size = int(batch_size)

    def images(self, images: ImageBatch, progress: bool = False) -> torch.Tensor:
        """``[N,D]`` embeddings of raw RGB images (uint8 ``[N,H,W,3]`` array or PIL list)."""
        return encode_images(self.model, self.preprocess, images, self.batch_size, progress)

    def captions(self, captions: Sequence[str], progress: bool = False) -> torch.Tensor:
        """``[N,D]`` embeddings of captions."""
        return encode_captions(self.model, self.tokenizer, captions, 2 * self.batch_size, progress)


@dataclass
class FeatureStore:
    """The cached embeddings with uid/caption -> row lookups (what downstream stages read)."""

    image_emb: torch.Tensor  # [N_img, D]
    image_row: pd.Series  # image_uid -> row
    caption_emb: torch.Tensor  # [N_cap, D]
    caption_row: pd.Series  # caption -> row

    @classmethod
    def load(cls, features_dir: str | Path) -> FeatureStore:
        d = Path(features_dir)
        img = load_tensors(d / "images.safetensors")["emb"]
        cap = load_tensors(d / "captions.safetensors")["emb"]
        img_idx = pd.read_parquet(d / "images.parquet")
        cap_idx = pd.read_parquet(d / "captions.parquet")
        img_row = pd.Series(img_idx["row"].to_numpy(), index=img_idx["image_uid"].astype(str))
        cap_row = pd.Series(cap_idx["row"].to_numpy(), index=cap_idx["caption"].astype(str))
        return cls(img, img_row, cap, cap_row)

    def image_rows(self, uids: Sequence[str] | np.ndarray, where: str = "pairs") -> np.ndarray:
        return _rows(self.image_row, uids, "image_uid", where)

    def caption_rows(
        self, captions: Sequence[str] | np.ndarray, where: str = "pairs"
    ) -> np.ndarray:
        return _rows(self.caption_row, captions, "caption", where)


def _rows(index: pd.Series, keys: Sequence[str] | np.ndarray, what: str, where: str) -> np.ndarray:
    keys = pd.Index(np.asarray(keys).astype(str))
    pos = index.index.get_indexer(keys)
    if (pos < 0).any():
        bad = int(np.flatnonzero(pos < 0)[0])
        raise KeyError(
            f"{where}: row {bad}: {what} {keys[bad]!r} has no cached feature; was the "
            "features stage run on this split?"
        )
    return index.to_numpy()[pos]


def check_finite(emb: torch.Tensor, keys: Sequence[str], what: str) -> None:
    """Fail naming the first image/caption whose embedding is not finite."""
    bad = ~torch.isfinite(emb).all(dim=1)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"features: {what} {keys[i]!r} (row {i}) has a non-finite embedding; "
            f"{int(bad.sum())} such rows in total"
        )


def split_keys(paths: Sequence[str | Path]) -> tuple[list[str], list[str]]:
    """Sorted distinct image uids and captions referenced by the given split tables."""
    uids: set[str] = set()
    caps: set[str] = set()
    for path in paths:
        df = pd.read_parquet(path)
        for col in IMAGE_COLUMNS:
            if col in df:
                values = df[col]
                if values.map(lambda v: isinstance(v, list | np.ndarray)).any():
                    values = values.explode()
                if values.isna().any():
                    row = int(np.flatnonzero(values.isna().to_numpy())[0])
                    raise ValueError(f"{path}: column {col} has a missing uid (row {row})")
                uids.update(values.astype(str))
        for col in CAPTION_COLUMNS:
            if col in df:
                if df[col].isna().any():
                    row = int(np.flatnonzero(df[col].isna().to_numpy())[0])
                    raise ValueError(f"{path}: column {col} has a missing caption (row {row})")
                caps.update(df[col].astype(str))
    return sorted(uids), sorted(caps)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clip-dir", required=True)
    parser.add_argument("--images", required=True, help="data/clean/images.parquet")
    parser.add_argument(
        "--splits", nargs="+", required=True, help="split tables whose images/captions to embed"
    )
    parser.add_argument("--out-dir", required=True, help="features/")
    parser.add_argument("--threads", type=int, default=0)


def run(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = int(args.params["features"]["batch_size"])
    uids, captions = split_keys(args.splits)
    log.info(
        "features: %d images and %d captions from %d split tables",
        len(uids),
        len(captions),
        len(args.splits),
    )
    embedder = ClipEmbedder(args.clip_dir, batch)
    img_emb = (
        torch.cat(
            [
                embedder.images(load_images(args.images, uids[s : s + 8192]))
                for s in range(0, len(uids), 8192)
            ]
        )
        if uids
        else embedder.images([])
    )
    cap_emb = embedder.captions(captions, progress=True)
    check_finite(img_emb, uids, "image_uid")
    check_finite(cap_emb, captions, "caption")
    out = Path(args.out_dir)
    meta: dict[str, Any] = {"clip_dir": str(args.clip_dir), "dim": str(img_emb.shape[1])}
    save_tensors({"emb": img_emb}, out / "images.safetensors", metadata=meta)
    write_parquet(
        pd.DataFrame({"image_uid": uids, "row": np.arange(len(uids), dtype=np.int64)}),
        out / "images.parquet",
    )
    save_tensors({"emb": cap_emb}, out / "captions.safetensors", metadata=meta)
    cap_rows = np.arange(len(captions), dtype=np.int64)
    write_parquet(pd.DataFrame({"caption": captions, "row": cap_rows}), out / "captions.parquet")
    log.info("features: wrote %s (dim %d)", out, img_emb.shape[1])
