"""Per-item costs behind docs/paper_scale.md, in one run (about a minute, one thread).

- Exact FLOPs of the paper models (SDXL UNet and VAE, open_clip ViT-H-14 / ViT-L-14), built on
  the meta device from their published configs, so no weights are downloaded or allocated.
- Premier at paper scale: its two preference adapters built from `config/paper.yaml`'s
  `premier` block on SDXL's cross-attention layers (meta device): parameters, checkpoint size,
  FLOPs per training image, and the images one run sees (steps x batch x accumulation).
- Measured CPU costs on this machine: a Diffusion-DPO step of the mini stand-in UNet
  (config/config.yaml) per pair, an fp32 GEMM for reference, and decoding a 512 px JPEG (the
  ingest stage's per-image cost on Pick-a-Pic-sized images).
Run: `.venv/bin/python bench/paper_costs.py`.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
import torch
import yaml
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from prefgen.generation.models import build_tiny_sdxl
from prefgen.premier.modulation import PremierModulator, PremierSpec, cross_attention_names
from torch.utils.flop_counter import FlopCounterMode

#: stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the keys that set the compute).
SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 2048,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
#: stabilityai/stable-diffusion-xl-base-1.0 vae/config.json.
SDXL_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 1024,
}


def flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of one call, counted by torch's FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def paper_models() -> None:
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
        n = sum(p.numel() for p in unet.parameters())
        add = {"text_embeds": torch.randn(1, 1280), "time_ids": torch.randn(1, 6)}
        f = flops(
            lambda: unet(
                torch.randn(1, 4, 128, 128),
                torch.tensor([500]),
                torch.randn(1, 77, 2048),
                added_cond_kwargs=add,
            )
        )
        print(f"SDXL UNet: {n / 1e9:.3f}B params, forward {f / 1e12:.3f} TFLOP per 1024 px image")
        vae = AutoencoderKL(**SDXL_VAE)
        enc = flops(lambda: vae.encode(torch.randn(1, 3, 1024, 1024)))
        dec = flops(lambda: vae.decode(torch.randn(1, 4, 128, 128)))
        print(f"SDXL VAE: encode {enc / 1e12:.3f} TFLOP, decode {dec / 1e12:.3f} TFLOP per image")
        for name in ("ViT-H-14", "ViT-L-14"):
            model = open_clip.create_model(name, pretrained=None, device="meta")
            fi = flops(lambda m=model: m.encode_image(torch.randn(1, 3, 224, 224)))
            ft = flops(lambda m=model: m.encode_text(torch.zeros(1, 77, dtype=torch.long)))
            print(f"{name}: image {fi / 1e9:.1f} GFLOP, text {ft / 1e9:.1f} GFLOP")


def premier_paper() -> None:
    """Premier's adapters and training budget from config/paper.yaml, on SDXL (meta device)."""
    cfg = yaml.safe_load(Path("config/paper.yaml").read_text())["premier"]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
        blocks = len(cross_attention_names(unet))
        spec = PremierSpec(
            text_dim=SDXL_UNET["cross_attention_dim"],
            num_blocks=blocks,
            user_tokens=cfg["user_tokens"],
            user_dim=cfg["user_dim"],
            adapter_dim=cfg["adapter"]["dim"],
            adapter_layers=cfg["adapter"]["layers"],
            adapter_heads=cfg["adapter"]["heads"],
        )
        mod = PremierModulator(spec)
        shared = sum(p.numel() for p in mod.shared.parameters())
        distinct = sum(p.numel() for p in mod.distinct.parameters())
        text = torch.randn(1, 77, spec.text_dim)
        user = torch.randn(1, spec.user_tokens, spec.user_dim)
        fwd = flops(lambda: mod(text, user))
        add = {"text_embeds": torch.randn(1, 1280), "time_ids": torch.randn(1, 6)}
        unet_fwd = flops(
            lambda: unet(
                torch.randn(1, 4, 128, 128),
                torch.tensor([500]),
                torch.randn(1, 77, 2048),
                added_cond_kwargs=add,
            )
        )
    train = cfg["train"]
    images = train["steps"] * train["batch_size"] * train["gradient_accumulation_steps"]
    # frozen UNet: forward + input-gradient backward; adapters: forward + backward with weight
    # gradients (2x forward)
    per_image = 2 * unet_fwd + 3 * fwd
    print(
        f"Premier on SDXL: {blocks} cross-attention layers; adapters {shared / 1e6:.1f}M shared"
        f" + {distinct / 1e6:.1f}M distinct = {(shared + distinct) * 4 / 1e9:.2f} GB fp32;"
        f" user embedding {spec.user_tokens * spec.user_dim * 4 / 1e3:.1f} kB"
    )
    print(
        f"Premier adapters forward {fwd / 1e9:.1f} GFLOP per image; training"
        f" {per_image / 1e12:.2f} TFLOP per image x {images:,} images"
        f" ({train['steps']} x {train['batch_size']} x {train['gradient_accumulation_steps']})"
        f" = {per_image * images:.3g} FLOP per run;"
        f" {-(-train['steps'] // train['checkpoint_every'])} checkpoints"
    )


def mini_dpo_step(reps: int = 5) -> None:
    """A DPO step's compute on the mini UNet: per image a reference forward (no grad) and a
    policy forward + backward, for the winner and the loser of 32 pairs."""
    cfg = yaml.safe_load(Path("config/config.yaml").read_text())["foundation"]
    unet = build_tiny_sdxl(cfg, cfg["resolution"], 0).unet
    te = cfg["text_encoder"]
    side = cfg["resolution"] // 4
    b = 64
    x, ehs = torch.randn(b, 4, side, side), torch.randn(b, te["max_length"], 2 * te["hidden_size"])
    t = torch.randint(0, 1000, (b,))
    add = {"text_embeds": torch.randn(b, te["hidden_size"]), "time_ids": torch.randn(b, 6)}
    fwd = flops(lambda: unet(x, t, ehs, added_cond_kwargs=add)) / b

    def step() -> None:
        with torch.no_grad():
            unet(x, t, ehs, added_cond_kwargs=add)
        unet(x, t, ehs, added_cond_kwargs=add).sample.pow(2).mean().backward()

    step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    per_pair = float(np.median(times)) / (b / 2)
    pair_flops = 8 * fwd  # 2 images x (reference fwd + fwd + backward of ~2 fwd)
    n = sum(p.numel() for p in unet.parameters())
    print(f"mini UNet: {n / 1e6:.3f}M params, forward {fwd / 1e6:.2f} MFLOP per image")
    print(
        f"mini DPO step: {per_pair * 1e3:.2f} ms per pair, {pair_flops / 1e6:.1f} MFLOP per pair"
        f" -> {pair_flops / per_pair / 1e9:.2f} GFLOP/s achieved"
    )


def gemm_and_jpeg() -> None:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    t0 = time.perf_counter()
    for _ in range(5):
        a @ b
    dt = (time.perf_counter() - t0) / 5
    print(f"fp32 GEMM 2048^3: {2 * 2048**3 / dt / 1e9:.1f} GFLOP/s")
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).resize((512, 512), Image.BICUBIC).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    t0 = time.perf_counter()
    for _ in range(50):
        Image.open(io.BytesIO(data)).convert("RGB")
    dt = (time.perf_counter() - t0) / 50
    print(f"JPEG 512x512 q90 ({len(data) / 1e3:.0f} kB): decode {dt * 1e3:.2f} ms")


if __name__ == "__main__":
    torch.set_num_threads(1)
    paper_models()
    premier_paper()
    mini_dpo_step()
    gemm_and_jpeg()
