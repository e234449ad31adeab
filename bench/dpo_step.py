"""Benchmark of one Diffusion-DPO training step; prints its ratios, measured in one run.

Variants (each in its own fresh process, so its peak memory is its own):

* ``adapter_off``  — ours: UNet + IP-Adapter, only the adapter trains, the reference is the
  same UNet with the adapter switched off, latents and text states come from the cache;
* ``copy_ref``     — the same adapter training, but the reference is a second, frozen UNet copy;
* ``full_copy``    — diffusers' full Diffusion-DPO recipe (``train_diffusion_dpo_sdxl.py``):
  the whole UNet trains and a frozen copy is the reference (why one keeps a copy at all);
* ``encode_each_step`` — ours, but the VAE encodes both images of every pair and both text
  encoders every caption at every step (no cache).

Ratios: adapter-off reference vs a second UNet copy (peak memory, target <= 0.6x; steps/s,
target >= 1.5x), against both copy variants; cached vs encoding per step (steps/s, >= 3x).

Peak memory is the peak resident set above the process's size just before the models are
loaded (or CUDA's peak allocation on a GPU). Models are the config's ``foundation`` sizes (UNet
channels times ``--width``: the paper's SDXL UNet is 2.6B parameters, where weights dominate
memory; the mini one is ~1M, where activations do), random weights, random data: timing does
not depend on training. Usage::

    .venv/bin/python bench/dpo_step.py [--preset mini|weights] [--config config/config.yaml]
        [--steps N] [--width W] [--batch B] [--[no-]gradient-checkpointing]
        # explicit options override the preset
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("adapter_off", "copy_ref", "full_copy", "encode_each_step")
#: The two regimes worth measuring (docs/decisions/20-train-dpo-step-benchmark.md).
#: ``weights``: 16x the config's UNet channels (141M parameters from the mini [24, 48]) at 4
#: pairs/step with gradient checkpointing, the paper recipe (config/paper.yaml), where the weights
#: outweigh the kept activations as they do for SDXL. ``None``: the config's value.
PRESETS: dict[str, dict[str, int | bool | None]] = {
    "mini": {"width": 1, "batch": None, "steps": 20, "gradient_checkpointing": None},
    "weights": {"width": 16, "batch": 4, "steps": 8, "gradient_checkpointing": True},
}


def status_mb(field: str) -> float:
    """``VmRSS`` (current) or ``VmHWM`` (peak) resident set size in MB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def build(config: str, width: int, out: Path) -> None:
    """Save a randomly initialised stand-in (UNet channels x ``width``) to ``out``."""
    from prefgen.core.config import load_config
    from prefgen.generation.models import build_tiny_sdxl

    cfg = load_config(config)["foundation"]
    channels = [c * width for c in cfg["unet"]["block_out_channels"]]
    unet = cfg["unet"] | {"block_out_channels": channels}
    pipe = build_tiny_sdxl(cfg | {"unet": unet}, resolution=int(cfg["resolution"]), seed=0)
    pipe.save_pretrained(out, safe_serialization=True)


def worker(
    variant: str,
    config: str,
    folder: str,
    steps: int,
    batch: int | None,
    checkpointing: bool | None,
) -> dict:
    """Time ``steps`` training steps of ``variant``; returns steps/s and peak memory (MB)."""
    from diffusers import DDPMScheduler
    from prefgen.core.config import load_config
    from prefgen.generation.adapters import UserBatch, build_conditioning
    from prefgen.generation.dpo import diffusion_dpo_loss
    from prefgen.generation.images import to_tensor
    from prefgen.generation.models import (
        add_time_ids,
        encode_text,
        load_denoiser,
        load_pipeline,
    )
    from prefgen.generation.train_adapter import DPOModel

    torch.set_num_threads(1)
    tcfg = load_config(config)["train"]
    batch = batch or int(tcfg["batch_size"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    words = ["red", "blue", "green", "yellow", "circle", "star", "square", "bright", "dark"]
    captions = [
        " ".join(
            [
                "a",
                *(words[int(i)] for i in torch.randint(9, (3,), generator=g)),
                "on",
                "a",
                "grey",
                "background",
            ]
        )
        for _ in range(batch)
    ]
    load_denoiser(folder)  # load once and drop it: lazy imports and allocator pools settle
    gc.collect()
    reset_peak_rss()
    base = status_mb("VmRSS")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    if variant == "encode_each_step":
        pipe = load_pipeline(folder).to(device)
        den = pipe
    else:
        den = load_denoiser(folder)
        den.unet.to(device)
    unet = den.unet
    if checkpointing is None:
        checkpointing = bool(tcfg["gradient_checkpointing"])
    if checkpointing:  # every variant alike, as train.py does it
        unet.enable_gradient_checkpointing()
    size = int(unet.config.sample_size * den.vae_scale_factor)
    images = torch.randint(0, 256, (2 * batch, size, size, 3), dtype=torch.uint8, generator=g)
    lat_shape = (
        2 * batch,
        unet.config.in_channels,
        unet.config.sample_size,
        unet.config.sample_size,
    )
    cached = torch.randn(lat_shape, generator=g).to(device)
    text_len = 16  # the stand-in tokenizers' context length
    cached_text = {
        "prompt_embeds": torch.randn(
            batch, text_len, unet.config.cross_attention_dim, generator=g
        ).to(device),
        "pooled": torch.randn(
            batch,
            unet.config.projection_class_embeddings_input_dim
            - 6 * unet.config.addition_time_embed_dim,
            generator=g,
        ).to(device),
    }
    noise_scheduler = DDPMScheduler.from_config(den.scheduler.config)
    method = {
        **(tcfg["methods"].get("dpo") or next(iter(tcfg["methods"].values()))),
        "embedding": None,
    }
    ref_unet = copy.deepcopy(unet) if variant in ("copy_ref", "full_copy") else None
    if variant == "full_copy":
        unet.requires_grad_(True)
        params = list(unet.parameters())
        cond = None
    else:
        cond = build_conditioning(unet, method, None).to(device)
        model = DPOModel(unet, cond, noise_scheduler)
        params = list(cond.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5)
    time_ids = add_time_ids(den, batch).to(device)

    def step() -> None:
        if variant == "encode_each_step":
            with torch.no_grad():
                x = to_tensor(images.numpy()).to(device)
                lat = pipe.vae.encode(x).latent_dist.sample() * pipe.vae.config.scaling_factor
                text = {k: v.to(device) for k, v in encode_text(pipe, captions).items()}
        else:
            lat, text = cached, cached_text
        users = UserBatch(
            user_ids=torch.zeros(batch, dtype=torch.long),
            prompt_embeds=text["prompt_embeds"],
            pooled=text["pooled"],
            time_ids=time_ids,
            rand=torch.ones(batch, device=device),
        )
        noise = torch.randn(lat[:batch].shape, device=device)
        t = torch.randint(0, 1000, (batch,), device=device)
        if ref_unet is None:
            pred, ref, target = model(lat[:batch], lat[batch:], noise, t, users)
        else:
            target, t2 = torch.cat([noise, noise]), torch.cat([t, t])
            noisy = noise_scheduler.add_noise(lat, target, t2)
            both = users.repeat(2)
            plain = {
                "encoder_hidden_states": both.prompt_embeds,
                "added_cond_kwargs": {"text_embeds": both.pooled, "time_ids": both.time_ids},
            }
            with torch.no_grad():
                ref = ref_unet(noisy, t2, **plain).sample
            inputs = plain if cond is None else cond.unet_inputs(both, train=True)
            pred = unet(noisy, t2, **inputs).sample
        loss = diffusion_dpo_loss(pred, ref, target, float(tcfg["beta"])).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    peak = (
        torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else status_mb("VmHWM") - base
    )
    return {
        "variant": variant,
        "steps_per_s": steps / elapsed,
        "peak_mb": peak,
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "batch_pairs": batch,
        "gradient_checkpointing": checkpointing,
        "device": device,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config" / "config.yaml"))
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="mini",
        help="mini: the config's UNet (activations dominate memory); "
        f"weights: {PRESETS['weights']['width']}x channels, "
        f"{PRESETS['weights']['batch']} pairs/step, gradient checkpointing "
        "(weights dominate, as in SDXL)",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps (preset's default)")
    parser.add_argument("--width", type=int, default=None, help="multiply the UNet's channels")
    parser.add_argument("--batch", type=int, default=None, help="pairs per step (train.batch_size)")
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="recompute UNet activations in backward (train.gradient_checkpointing)",
    )
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.worker:
        print(
            json.dumps(
                worker(
                    args.worker,
                    args.config,
                    args.folder,
                    args.steps,
                    args.batch,
                    args.gradient_checkpointing,
                )
            )
        )
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        build(args.config, args.width, Path(tmp) / "foundation")
        for variant in VARIANTS:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                variant,
                "--config",
                args.config,
                "--folder",
                str(Path(tmp) / "foundation"),
                "--steps",
                str(args.steps),
            ]
            cmd += ["--batch", str(args.batch)] if args.batch else []
            if args.gradient_checkpointing is not None:
                cmd.append(
                    "--" + "no-" * (not args.gradient_checkpointing) + "gradient-checkpointing"
                )
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
            results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    ours = results["adapter_off"]
    print(
        f"preset {args.preset}, {args.config} (UNet channels x{args.width}): "
        f"UNet {ours['unet_params']:,} parameters, {ours['batch_pairs']} pairs/step, "
        f"{args.steps} timed steps, gradient checkpointing "
        f"{'on' if ours['gradient_checkpointing'] else 'off'}, {ours['device']}"
    )
    for r in results.values():
        print(f"  {r['variant']:17s} {r['steps_per_s']:7.2f} steps/s   peak {r['peak_mb']:9.1f} MB")

    def verdict(value: float, target: float, below: bool) -> str:
        ok = value <= target if below else value >= target
        sign = "<=" if below else ">="
        return f"{value:.2f}x (target {sign} {target}x: {'met' if ok else 'NOT met'})"

    for name in ("copy_ref", "full_copy"):
        other = results[name]
        print(
            f"adapter-off reference vs second UNet copy ({name}): peak memory "
            f"{verdict(ours['peak_mb'] / other['peak_mb'], 0.6, True)}, steps/s "
            f"{verdict(ours['steps_per_s'] / other['steps_per_s'], 1.5, False)}"
        )
    enc = results["encode_each_step"]
    print(
        "cached latents/text states vs encoding every step: steps/s "
        f"{verdict(ours['steps_per_s'] / enc['steps_per_s'], 3.0, False)}"
    )


if __name__ == "__main__":
    main()
