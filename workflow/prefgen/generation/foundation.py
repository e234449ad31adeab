"""``foundation`` (mini/smoke only): train the tiny SDXL-architecture model on the world's images.

Stand-in for SDXL base 1.0, which cannot be downloaded here. The recipe, in the order it runs:
1. build the pipeline offline from the config (``models.build_tiny_sdxl``);
2. train the VAE briefly (L1 + MSE reconstruction, optionally in a colour-whitened space,
   + a small KL term), then set its ``scaling_factor`` to 1/std of the training latents, as
   Stable Diffusion does;
3. keep both CLIP text encoders *frozen at their random initialisation* (recorded in
   ``foundation.json``): a random transformer still gives every word a distinct, fixed state,
   the UNet's cross-attention learns to read it, and frozen encoders let the text states of
   every caption be computed once;
4. train the UNet with the denoising objective (``generation/denoising.py``; SDXL's is
   epsilon) on SDXL's noise schedule, dropping 10% of the
   captions to SDXL's unconditional input (zeros, ``force_zeros_for_empty_prompt``) so that
   classifier-free guidance works;
5. ``save_pretrained`` the pipeline (atomically) and measure its quality with the world's
   pixel functions (``quality.foundation_quality``).

Training pairs come from ``splits/pipe/train.parquet`` only, so the unseen evaluation prompts
are never seen by the foundation either.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from prefgen.core.io import atomic_dir, write_json
from prefgen.core.logging import get_logger
from prefgen.core.seeding import derive_seed, seed_everything
from prefgen.generation.images import load_images, to_tensor

log = get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="data/clean/images.parquet")
    parser.add_argument("--pairs", required=True, help="splits/pipe/train.parquet")
    parser.add_argument("--out", required=True, help="models/foundation/ (pipeline folder)")
    parser.add_argument("--quality", required=True, help="tables/foundation_quality.csv")
    parser.add_argument("--threads", type=int, default=1)


def image_captions(pairs: pd.DataFrame, images: pd.DataFrame, pairs_path: str) -> pd.DataFrame:
    """One (image_uid, caption) row per training image: both images of a pair share its caption."""
    for col in ("caption", "image_w_uid", "image_l_uid"):
        if col not in pairs.columns:
            raise ValueError(f"{pairs_path}: missing column '{col}' (split table schema)")
    rows = (
        pd.concat(
            [
                pairs[["image_w_uid", "caption"]].rename(columns={"image_w_uid": "image_uid"}),
                pairs[["image_l_uid", "caption"]].rename(columns={"image_l_uid": "image_uid"}),
            ]
        )
        .drop_duplicates("image_uid")
        .sort_values("image_uid", kind="stable")
    )
    missing = set(rows["image_uid"]) - set(images["image_uid"])
    if missing:
        raise ValueError(
            f"{pairs_path}: {len(missing)} image uids not in the image table, "
            f"e.g. {sorted(missing)[:3]}"
        )
    return rows.reset_index(drop=True)


def colour_whitening(pixels: torch.Tensor, max_pixels: int = 1_000_000) -> torch.Tensor:
    """A 3×3 map that decorrelates RGB and gives each principal colour axis equal variance.

    Why: in the world's images the luminance axis carries ~75% of the pixel variance, so an RGB
    reconstruction loss teaches a small VAE luminance first and hue late; within the mini
    budget its reconstructions kept the object's colour in only a third of the images, and
    the colour words the prompts name are what the foundation must render. The map is scaled
    so the whitened pixels keep the total RGB variance, which leaves the loss scale (and the
    learning rate that suits it) comparable.
    """
    # the first ``max_pixels`` pixels per channel in image order; slicing images first avoids
    # a channel-major copy of the whole training set
    n_images = -(-max_pixels // (pixels.shape[-1] * pixels.shape[-2]))
    flat = pixels[:n_images].permute(1, 0, 2, 3).reshape(3, -1)[:, :max_pixels].double()
    cov = torch.cov(flat)
    eigval, eigvec = torch.linalg.eigh(cov)
    whiten = eigvec @ torch.diag(eigval.clamp_min(1e-8).rsqrt()) @ eigvec.T
    whiten *= (cov.trace() / (whiten @ cov @ whiten.T).trace()).sqrt()
    return whiten.float()


def train_vae(vae: Any, pixels: torch.Tensor, cfg: dict[str, Any], seed: int) -> list[float]:
    """Reconstruction training (L1 + MSE, KL weight ``kl_weight``); returns the loss curve.

    The VAE is convolutional, so it trains on random ``crop``-pixel crops (one position per
    batch): a quarter of the pixels at crop = resolution/2, i.e. four times the steps for the
    same compute, which is what a two-core budget needs. With ``loss_colour_space: whitened``
    the reconstruction error is measured after ``colour_whitening`` (hue errors count as much
    as brightness errors); the VAE itself still maps RGB to RGB.
    """
    whiten = colour_whitening(pixels) if cfg["loss_colour_space"] == "whitened" else None
    gen = torch.Generator().manual_seed(derive_seed(seed, "foundation", "vae"))
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg["lr"], total_steps=cfg["steps"], pct_start=0.1
    )
    vae.train()
    losses = []
    for _ in tqdm(range(cfg["steps"]), desc="vae", mininterval=5):
        idx = torch.randint(len(pixels), (cfg["batch_size"],), generator=gen)
        x = pixels[idx]
        crop = min(int(cfg["crop"]), x.shape[-1])
        if crop < x.shape[-1]:
            i, j = torch.randint(0, x.shape[-1] - crop + 1, (2,), generator=gen).tolist()
            x = x[:, :, i : i + crop, j : j + crop]
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        kl = dist.kl().mean() / x[0].numel()
        if whiten is None:
            recon_loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        else:
            err = torch.einsum("ij,bjhw->bihw", whiten, recon - x)
            recon_loss = err.abs().mean() + err.square().mean()
        loss = recon_loss + cfg["kl_weight"] * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    vae.eval()
    vae.requires_grad_(False)
    return losses


@torch.no_grad()
def encode_latents(
    vae: Any, pixels: torch.Tensor, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE posterior mean and std (unscaled) for every image."""
    means, stds = [], []
    for start in range(0, len(pixels), batch_size):
        dist = vae.encode(pixels[start : start + batch_size]).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def train_unet(
    pipe: Any,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    prompt_embeds: torch.Tensor,
    pooled: torch.Tensor,
    cfg: dict[str, Any],
    seed: int,
) -> list[float]:
    """Denoising training (ε or v, per the scheduler: ``generation/denoising.py``) on (latent,
    caption state) rows; returns the loss curve.

    ``latent_*`` are already multiplied by the VAE scaling factor; each step draws a latent
    from the posterior, a timestep uniformly, and replaces ``caption_dropout`` of the captions
    by the zero states SDXL uses as its unconditional input.
    """
    from diffusers import DDPMScheduler

    from prefgen.generation.denoising import batch_mse, noisy_and_target
    from prefgen.generation.models import add_time_ids

    unet = pipe.unet
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    gen = torch.Generator().manual_seed(derive_seed(seed, "foundation", "unet"))
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg["lr"], total_steps=cfg["steps"], pct_start=0.05
    )
    bs = cfg["batch_size"]
    time_ids = add_time_ids(pipe, bs)
    unet.train()
    losses = []
    for _ in tqdm(range(cfg["steps"]), desc="unet", mininterval=5):
        idx = torch.randint(len(latent_mean), (bs,), generator=gen)
        x0 = latent_mean[idx] + latent_std[idx] * torch.randn(latent_mean[idx].shape, generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (bs,), generator=gen)
        keep = (torch.rand(bs, generator=gen) >= cfg["caption_dropout"]).float()
        text = prompt_embeds[idx] * keep[:, None, None]
        pool = pooled[idx] * keep[:, None]
        noisy, target = noisy_and_target(noise_sched, x0, noise, t)
        pred = unet(
            noisy,
            t,
            encoder_hidden_states=text,
            added_cond_kwargs={"text_embeds": pool, "time_ids": time_ids},
        ).sample
        loss = batch_mse(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    unet.eval()
    unet.requires_grad_(False)
    return losses


def train_foundation(
    images: np.ndarray, captions: list[str], cfg: dict[str, Any], seed: int
) -> tuple[Any, dict[str, Any]]:
    """Build and train the tiny pipeline on uint8 images [N,H,W,3] and their captions."""
    from prefgen.generation.models import build_tiny_sdxl, encode_text

    seed_everything(derive_seed(seed, "foundation"))
    resolution = images.shape[1]
    pipe = build_tiny_sdxl(cfg, resolution=resolution, seed=derive_seed(seed, "foundation", "init"))
    pipe.text_encoder.requires_grad_(False)
    pipe.text_encoder_2.requires_grad_(False)
    pixels = to_tensor(images)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    vae_losses = train_vae(pipe.vae, pixels, cfg["vae"], seed)
    timings["vae_s"] = time.perf_counter() - t0
    mean, std = encode_latents(pipe.vae, pixels)
    scaling = float(1.0 / mean.std())
    pipe.vae.register_to_config(scaling_factor=scaling)
    log.info(
        "VAE: %d steps, final loss %.4f, latent scaling factor %.4f",
        len(vae_losses),
        float(np.mean(vae_losses[-20:])),
        scaling,
    )

    t0 = time.perf_counter()
    unique = sorted(set(captions))
    states = encode_text(pipe, unique)
    row = {c: i for i, c in enumerate(unique)}
    rows = torch.tensor([row[c] for c in captions])
    timings["text_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    unet_losses = train_unet(
        pipe,
        mean * scaling,
        std * scaling,
        states["prompt_embeds"][rows],
        states["pooled"][rows],
        cfg["unet"],
        seed,
    )
    timings["unet_s"] = time.perf_counter() - t0
    log.info(
        "UNet: %d steps, final loss %.4f (%.0f s)",
        len(unet_losses),
        float(np.mean(unet_losses[-20:])),
        timings["unet_s"],
    )
    info = {
        "stand_in": "tiny SDXL-architecture model trained from scratch on the synthetic world "
        "(stand-in for stabilityai/stable-diffusion-xl-base-1.0)",
        "text_encoders": "frozen at random initialisation (not trained)",
        "n_images": len(images),
        "n_captions": len(unique),
        "resolution": resolution,
        "vae_scaling_factor": scaling,
        "vae_initial_loss": float(np.mean(vae_losses[:10])),
        "vae_final_loss": float(np.mean(vae_losses[-10:])),
        "unet_initial_loss": float(np.mean(unet_losses[:10])),
        "unet_final_loss": float(np.mean(unet_losses[-10:])),
        "parameters": {
            name: sum(p.numel() for p in getattr(pipe, name).parameters())
            for name in ("vae", "unet", "text_encoder", "text_encoder_2")
        },
        "timings": timings,
    }
    return pipe, info


def run(args: argparse.Namespace) -> None:
    from prefgen.generation.models import load_pipeline
    from prefgen.generation.quality import foundation_quality, write_quality

    p = args.params
    cfg, seed = p["foundation"], int(p["seed"])
    if cfg.get("pretrained"):
        raise ValueError(
            "foundation.pretrained is set: the foundation rule only trains the "
            "stand-in; the other rules load the pretrained id directly"
        )
    torch.set_num_threads(max(1, args.threads))
    rows = image_captions(
        pd.read_parquet(args.pairs), pd.read_parquet(args.images, columns=["image_uid"]), args.pairs
    )
    pixels = load_images(args.images, rows["image_uid"].tolist(), int(cfg["resolution"]))
    captions = rows["caption"].tolist()
    log.info("foundation: %d images, %d captions", len(rows), rows["caption"].nunique())
    pipe, info = train_foundation(pixels, captions, cfg, seed)

    out = Path(args.out)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        write_json(info, tmp / "foundation.json")
    t0 = time.perf_counter()
    quality = foundation_quality(load_pipeline(out), cfg["quality"], seed, pixels, captions)
    log.info("quality check (%.0f s):\n%s", time.perf_counter() - t0, quality.to_string())
    write_quality(quality, args.quality)
