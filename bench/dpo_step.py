"""Benchmark of one Diffusion-DPO training step, printing two ratios measured in one run.

1. **Reference = the same UNet with the adapter off** (ours) vs **a second, frozen UNet copy**
   as the reference (what a full fine-tuning Diffusion-DPO script keeps): peak memory
   (target <= 0.6x) and steps/s (target >= 1.5x).
2. **Cached latents and text states** (ours: ``encode`` runs once) vs **encoding every step**
   (VAE on both images of every pair, both text encoders on every caption): steps/s
   (target >= 3x).

Each variant runs in its own fresh process (so peak memory is that variant's alone: the peak
resident set above the process's size before the models are built, or CUDA's peak allocation
on a GPU), on the model sizes of a config's ``foundation`` section with random weights and
random images (timing does not depend on training). Usage::

    .venv/bin/python bench/dpo_step.py [--config config/config.yaml] [--steps 20]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("adapter_off", "second_copy", "encode_each_step")


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def worker(variant: str, config: str, steps: int, batch: int | None) -> dict[str, float]:
    """Time ``steps`` DPO steps of ``variant``; returns steps/s and peak memory (MB)."""
    from diffusers import DDPMScheduler
    from prefgen.core.config import load_config
    from prefgen.generation.adapters import UserBatch, build_conditioning
    from prefgen.generation.dpo import diffusion_dpo_loss
    from prefgen.generation.images import to_tensor
    from prefgen.generation.models import add_time_ids, build_tiny_sdxl, encode_text
    from prefgen.generation.train import DPOModel

    torch.set_num_threads(1)
    cfg = load_config(config)
    fcfg, tcfg = cfg["foundation"], cfg["train"]
    batch = batch or int(tcfg["batch_size"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    size = int(fcfg["resolution"])
    words = ["red", "blue", "green", "yellow", "circle", "star", "square", "bright", "dark"]
    captions = [" ".join(["a", *(words[int(i)] for i in torch.randint(9, (4,), generator=g)),
                          "on", "a", "grey", "background"]) for _ in range(batch)]
    images = torch.randint(0, 256, (2 * batch, size, size, 3), dtype=torch.uint8, generator=g)
    base_rss = rss_mb()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    pipe = build_tiny_sdxl(fcfg, resolution=size, seed=0).to(device)
    for name in ("vae", "unet", "text_encoder", "text_encoder_2"):
        getattr(pipe, name).eval().requires_grad_(False)
    ref_unet = copy.deepcopy(pipe.unet) if variant == "second_copy" else None
    method = tcfg["methods"].get("dpo") or next(iter(tcfg["methods"].values()))
    cond = build_conditioning(pipe.unet, {**method, "embedding": None}, None).to(device)
    model = DPOModel(pipe.unet, cond, DDPMScheduler.from_config(pipe.scheduler.config))
    opt = torch.optim.AdamW(cond.parameters(), lr=1e-4)

    with torch.no_grad():
        dist = pipe.vae.encode(to_tensor(images.numpy()).to(device)).latent_dist
        cached_latents = dist.mean * pipe.vae.config.scaling_factor
        cached_text = encode_text(pipe, captions)

    def step() -> None:
        if variant == "encode_each_step":
            with torch.no_grad():
                d = pipe.vae.encode(to_tensor(images.numpy()).to(device)).latent_dist
                lat = d.sample() * pipe.vae.config.scaling_factor
                text = encode_text(pipe, captions)
        else:
            lat, text = cached_latents, cached_text
        users = UserBatch(user_ids=torch.zeros(batch, dtype=torch.long),
                          prompt_embeds=text["prompt_embeds"].to(device),
                          pooled=text["pooled"].to(device),
                          time_ids=add_time_ids(pipe, batch).to(device),
                          rand=torch.ones(batch, device=device))
        noise = torch.randn(lat[:batch].shape, device=device)
        t = torch.randint(0, 1000, (batch,), device=device)
        if ref_unet is None:
            pred, ref, target = model(lat[:batch], lat[batch:], noise, t, users)
        else:  # the reference is a separate frozen copy with the original processors
            x0, n2, t2 = torch.cat([lat[:batch], lat[batch:]]), torch.cat([noise, noise]), \
                torch.cat([t, t])
            noisy = model.noise_scheduler.add_noise(x0, n2, t2)
            both = users.repeat(2)
            with torch.no_grad():
                ref = ref_unet(noisy, t2, encoder_hidden_states=both.prompt_embeds,
                               added_cond_kwargs={"text_embeds": both.pooled,
                                                  "time_ids": both.time_ids}).sample
            pred = pipe.unet(noisy, t2, **cond.unet_inputs(both, train=True)).sample
            target = n2
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
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    return {"variant": variant, "steps_per_s": steps / elapsed, "peak_mb": peak,
            "unet_params": sum(p.numel() for p in pipe.unet.parameters()),
            "batch_pairs": batch, "device": device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config" / "config.yaml"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=None, help="pairs per step (train.batch_size)")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.config, args.steps, args.batch)))
        return
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--worker", variant, "--config", args.config,
               "--steps", str(args.steps)] + (["--batch", str(args.batch)] if args.batch else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    ours, copy_, enc = (results[v] for v in VARIANTS)
    print(f"config {args.config}: UNet {ours['unet_params']:,} parameters, "
          f"{ours['batch_pairs']} pairs/step, {args.steps} timed steps, {ours['device']}")
    for r in results.values():
        print(f"  {r['variant']:18s} {r['steps_per_s']:7.2f} steps/s   peak {r['peak_mb']:8.1f} MB")
    mem = ours["peak_mb"] / copy_["peak_mb"]
    speed = ours["steps_per_s"] / copy_["steps_per_s"]
    cache = ours["steps_per_s"] / enc["steps_per_s"]
    print(f"adapter-off reference vs second UNet copy: peak memory {mem:.2f}x (target <= 0.6x: "
          f"{'met' if mem <= 0.6 else 'NOT met'}), steps/s {speed:.2f}x (target >= 1.5x: "
          f"{'met' if speed >= 1.5 else 'NOT met'})")
    print(f"cached latents/text states vs encoding every step: steps/s {cache:.2f}x "
          f"(target >= 3x: {'met' if cache >= 3 else 'NOT met'})")


if __name__ == "__main__":
    main()
