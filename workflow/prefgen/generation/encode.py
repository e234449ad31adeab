"""``encode``: VAE latents of the training images and text states of their captions, once.

Diffusion-DPO only trains the adapter, so the VAE and both text encoders are constants of the
training loop; running them every step would dominate its cost (bench/dpo_step.py measures
by how much). This stage runs them once over exactly the pairs the trainer will use
(``adapter_pairs.training_pairs``) and writes

* ``train.safetensors``: ``latent_mean``/``latent_std`` ``[N_img, C, h, w]`` (the VAE posterior,
  already multiplied by the VAE's scaling factor, so the trainer samples ``mean + std * eps``
  like ``latent_dist.sample()``), ``prompt_embeds`` ``[N_cap, L, D]`` and ``pooled``
  ``[N_cap, P]`` (as ``encode_prompt`` returns them for the pipeline);
* ``images.parquet`` (``image_uid, row``) and ``captions.parquet`` (``caption, row``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from prefgen.core.io import save_tensors, write_parquet
from prefgen.core.logging import get_logger
from prefgen.generation.adapter_pairs import training_pairs
from prefgen.generation.images import load_images, to_tensor

log = get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--foundation", required=True, help="pipeline folder or hub id")
    parser.add_argument("--images", required=True, help="data/clean/images.parquet")
    parser.add_argument("--pairs", required=True, help="splits/pipe/train.parquet")
    parser.add_argument("--holdout", required=True, help="splits/ppd/test_unseen.parquet")
    parser.add_argument("--out", required=True, help="cache/encoded/train.safetensors")
    parser.add_argument("--image-index", required=True, help="cache/encoded/images.parquet")
    parser.add_argument("--caption-index", required=True, help="cache/encoded/captions.parquet")
    parser.add_argument("--threads", type=int, default=1)


@torch.no_grad()
def encode_images(
    vae: torch.nn.Module, pixels_uint8, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image, times the VAE scaling factor."""
    scale = float(vae.config.scaling_factor)
    means, stds = [], []
    param = next(vae.parameters())
    for start in tqdm(range(0, len(pixels_uint8), batch_size), desc="vae", mininterval=5):
        x = to_tensor(pixels_uint8[start : start + batch_size]).to(param)
        dist = vae.encode(x).latent_dist
        means.append(dist.mean.float().cpu() * scale)
        stds.append(dist.std.float().cpu() * scale)
    return torch.cat(means), torch.cat(stds)


def run(args: argparse.Namespace) -> None:
    from prefgen.generation.models import encode_text, image_size, load_pipeline

    torch.set_num_threads(max(1, args.threads))
    batch_size = int(args.params["encode"]["batch_size"])
    pairs = training_pairs(
        pd.read_parquet(args.pairs), pd.read_parquet(args.holdout), args.pairs, args.holdout
    )
    uids = sorted(set(pairs["image_w_uid"]) | set(pairs["image_l_uid"]))
    captions = sorted(set(pairs["caption"]))
    pipe = load_pipeline(args.foundation)
    size = image_size(pipe)
    log.info(
        "encode: %d pairs -> %d images at %d px, %d captions",
        len(pairs),
        len(uids),
        size,
        len(captions),
    )
    mean, std = encode_images(pipe.vae, load_images(args.images, uids, size), batch_size)
    text = encode_text(pipe, captions, batch_size)
    save_tensors(
        {"latent_mean": mean, "latent_std": std, **text},
        args.out,
        metadata={
            "scaling_factor": str(pipe.vae.config.scaling_factor),
            "foundation": str(args.foundation),
        },
    )
    write_parquet(pd.DataFrame({"image_uid": uids, "row": range(len(uids))}), args.image_index)
    write_parquet(
        pd.DataFrame({"caption": captions, "row": range(len(captions))}), args.caption_index
    )
    log.info("wrote %s (%.1f MB)", args.out, Path(args.out).stat().st_size / 2**20)
